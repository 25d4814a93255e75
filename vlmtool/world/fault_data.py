"""The bytes of the hostile corpus's faulty (and valid but unusual) members: images, captions,
metadata. Each maker is deterministic: same arguments, same bytes."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np

MiB = 1 << 20


def _save(img, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def noise_image(rng: np.random.Generator, size=(96, 72), mode: str = "RGB"):
    """Noise compresses badly: a cut anywhere in the pixel data leaves pixels undecoded."""
    from PIL import Image

    w, h = size
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode)


# ---------------------------------------------------------------------------------- images


def truncated_jpeg(rng: np.random.Generator, keep: float) -> bytes:
    """A JPEG whose headers are whole and whose scan data ends after `keep` of it."""
    data = _save(noise_image(rng), "JPEG", quality=90)
    sos = data.find(b"\xff\xda")  # start of scan
    return data[: sos + int((len(data) - sos) * keep)]


def truncated_png(rng: np.random.Generator, keep: float) -> bytes:
    """A PNG cut inside its first IDAT chunk, after `keep` of that chunk's data."""
    data = _save(noise_image(rng), "PNG")
    idat = data.find(b"IDAT")
    (length,) = struct.unpack(">I", data[idat - 4 : idat])
    return data[: idat + 4 + int(length * keep)]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def forged_png(width: int, height: int) -> bytes:
    """A tiny PNG (65 bytes) whose header declares width x height: a bomb by its header alone."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"")) + _png_chunk(b"IEND", b"")


def forged_jpeg(width: int, height: int) -> bytes:
    """A small valid JPEG whose frame header (SOF0) is rewritten to declare width x height."""
    from PIL import Image

    data = _save(Image.new("RGB", (16, 16), (90, 90, 200)), "JPEG")
    sof = data.find(b"\xff\xc0")
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def real_bomb(width: int, height: int) -> bytes:
    """A real 1-bit PNG of width x height pixels: megapixels in a few KB."""
    from PIL import Image

    return _save(Image.new("1", (width, height)), "PNG")


def unusual_images(rng: np.random.Generator) -> dict[str, tuple[str, bytes]]:
    """Valid images in the modes and formats real datasets hold: each must be processed OK.
    name -> (member extension, bytes)."""
    from PIL import Image

    rgb = noise_image(rng, (80, 60))
    exif6, exif8 = Image.Exif(), Image.Exif()
    exif6[0x0112], exif8[0x0112] = 6, 8  # Orientation: rotate 90 CW / 90 CCW to display
    i16 = Image.fromarray(rng.integers(0, 65536, size=(40, 50), dtype=np.uint16))
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return {
        "cmyk_jpeg": ("jpg", _save(rgb.convert("CMYK"), "JPEG")),
        "png_16bit_gray": ("png", _save(i16, "PNG")),
        "palette_png_transparent": ("png", _save(pal, "PNG", transparency=0)),
        "grayscale_jpeg": ("jpg", _save(rgb.convert("L"), "JPEG")),
        "gray_alpha_png": ("png", _save(rgb.convert("LA"), "PNG")),
        "one_bit_png": ("png", _save(rgb.convert("1"), "PNG")),
        "exif_rotated_jpeg_6": ("jpg", _save(rgb, "JPEG", exif=exif6)),
        "exif_rotated_jpeg_8": ("jpg", _save(rgb, "JPEG", exif=exif8)),
        "progressive_jpeg": ("jpg", _save(rgb, "JPEG", progressive=True)),
        "webp_lossy": ("webp", _save(rgb, "WEBP", quality=80)),
        "webp_lossless_alpha": ("webp", _save(rgb.convert("RGBA"), "WEBP", lossless=True)),
        "gif": ("gif", _save(pal, "GIF")),
        "bmp": ("bmp", _save(rgb, "BMP")),
        "tiff": ("tiff", _save(rgb, "TIFF")),
        "jpeg_bytes_named_png": ("png", _save(rgb, "JPEG")),
    }


# ---------------------------------------------------------------------------------- captions and metadata


class Repeat(io.RawIOBase):
    """`size` bytes of `pattern` repeated, read in chunks: a huge member written without holding it."""

    def __init__(self, pattern: bytes, size: int):
        self.pattern, self.size, self.pos = pattern, size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.size - self.pos)
        start = self.pos % len(self.pattern)
        reps = (start + n) // len(self.pattern) + 1
        b[:n] = (self.pattern * reps)[start : start + n]
        self.pos += n
        return n


def bad_encodings() -> dict[str, bytes]:
    """Captions that are not UTF-8."""
    return {
        "latin1": "Un cercle rouge à gauche d'un carré bleu.".encode("latin-1"),
        "utf16_bom": "A red circle.".encode("utf-16"),
        "cesu_surrogate": b"A red \xed\xa0\x80 circle.",
        "overlong_slash": b"A red circle \xc0\xaf square.",
        "cut_multibyte": "A red circle, 漢".encode()[:-1],
    }


def valid_odd_captions() -> dict[str, bytes]:
    """Captions that look odd and are fine."""
    return {
        "utf8_bom": b"\xef\xbb\xbfA red circle above a blue square.",
        "cjk_emoji": "红色的圆圈 🔴 above a blue square.".encode(),
        "padded": b"\n\n   A red circle.   \n",
    }


def bad_json() -> dict[str, bytes]:
    """json members that are not valid JSON."""
    return {
        "not_json": b"{not json at all",
        "empty_json": b"",
        "truncated_json": b'{"objects": [{"shape": "circle", "bbox": [1, 2',
        "trailing_garbage": b'{"objects": []} and more',
        "not_utf8_json": b'{"caption_true": "caf\xe9"}',
        "nan_literal": b'{"objects": [{"shape": "circle", "bbox": [0, 0, NaN, 4]}]}',
    }


def bad_metadata() -> dict[str, dict]:
    """Valid JSON whose `objects` has the wrong type."""
    return {
        "objects_int": {"objects": 5},
        "objects_dict": {"objects": {"circle": [0, 0, 4, 4]}},
        "objects_null": {"objects": None},
        "objects_string": {"objects": "circle, square"},
        "bbox_string": {"objects": [{"shape": "circle", "bbox": "abcd"}]},
        "bbox_one_number": {"objects": [{"shape": "circle", "bbox": [1]}]},
        "bbox_string_number": {"objects": [{"shape": "circle", "bbox": [0, 0, "1", 2]}]},
        "bbox_bool": {"objects": [{"shape": "circle", "bbox": [0, 0, 1, True]}]},
        "label_number": {"objects": [{"shape": 3, "bbox": [0, 0, 1, 1]}]},
        "label_empty": {"objects": [""]},
        "object_list": {"objects": [["circle", [0, 0, 1, 1]]]},
    }


def odd_metadata() -> dict[str, object]:
    """Valid JSON that the core accepts: other label keys, no boxes, no objects, not an object."""
    return {
        "labels_as_strings": {"objects": ["circle", "square"]},
        "label_key_name": {"objects": [{"name": "circle"}, {"category": "square", "bbox": [1.5, 2, 10, 20.25]}]},
        "no_objects_field": {"source": "elsewhere"},
        "objects_empty": {"objects": []},
        "top_level_list": [1, 2, 3],
    }
