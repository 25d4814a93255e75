"""webdataset records -> typed samples, and the reasons a sample is rejected.

A record that cannot become a sample raises SampleError with one of REASONS; the batch core
counts it, logs it (shard, key, reason, detail) and goes on, or stops under --strict.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import orjson

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
CAPTION_EXTS = ("txt", "caption")
# PIL's own decompression-bomb threshold (Image.MAX_IMAGE_PIXELS): 1024*1024*1024 // 4 // 3.
DEFAULT_MAX_PIXELS = 89_478_485

REASONS = {
    "missing_image": "the record has no image member (jpg/png/webp/...)",
    "corrupt_image": "the image bytes are not a decodable image",
    "truncated_image": "the image file ends before its data does",
    "image_too_large": "the image has more pixels than --max-pixels (a decompression bomb guard)",
    "missing_caption": "the record has no caption member (txt)",
    "empty_caption": "the caption is empty or only whitespace",
    "bad_caption_encoding": "the caption is not valid UTF-8",
    "bad_json": "the json member is not valid JSON",
    "bad_metadata": "a field of the json member has the wrong type (e.g. objects that are not a list of labels or boxes)",
    "broken_tar": "the tar file ends or breaks inside this record, or cannot be opened or read at all",
    "duplicate_member": "a member of the record is repeated (e.g. KEY.jpg twice in a row)",
    "duplicate_key": "the record's key appears earlier in the same shard",
    "unsafe_key": "the record's key is an absolute path or climbs out of its folder (`..`): no output may carry it",
    "member_too_large": "a member is larger than its cap (--max-image-bytes, --max-text-bytes, --max-member-bytes)",
    "filtered": "a pre-filter of the job excluded the sample",
}

# What the model side (train, infer, eval) rejects beyond the record stream's reasons.
MODEL_REASONS = {
    "bad_features": "a feature member is not a readable float [T, D] array of the tower's width with the rows its views name",
    "non_finite": "a feature member holds NaN or infinite values",
    "too_long": "the sample's tokens do not fit the model's context",
    "bad_row": "an instruction or question row has a missing or wrong-typed field, or an image marker count that is not one",
}


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def clean_detail(detail: str, limit: int = 300) -> str:
    """A reject's detail as stored: no memory addresses (identical runs give identical rejects),
    and bounded (a detail may quote input)."""
    detail = _ADDRESS.sub("", detail)
    return detail if len(detail) <= limit else detail[:limit] + "..."


class SampleError(Exception):
    def __init__(self, reason: str, detail: str = ""):
        assert reason in REASONS or reason in MODEL_REASONS or reason.startswith("filter:"), reason
        detail = clean_detail(detail)
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Sample:
    key: str
    shard: str  # the shard's name in the job
    image_bytes: bytes | None
    image_ext: str | None
    caption: str | None
    meta: dict = field(default_factory=dict)
    width: int = 0
    height: int = 0
    record: dict = field(default_factory=dict, repr=False)  # the raw members, for copying out
    header: object = field(default=None, repr=False)  # the PIL image opened for its size, not yet decoded

    def load_image(self, draft: tuple[int, int] | None = None, mode: str = "RGB"):
        """Decode the image fully. With `draft`, JPEGs decode at the smallest DCT scale that is
        still at least that size (PIL's draft mode), which is much cheaper for large images."""
        opened, self.header = self.header, None  # a PIL image decodes once
        return decode_image(self.image_bytes or b"", draft=draft, mode=mode, opened=opened)


def open_header(data: bytes, max_pixels: int):
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise SampleError("image_too_large", str(e)) from None
    except Exception as e:  # UnidentifiedImageError, SyntaxError from broken headers, ...
        raise SampleError("corrupt_image", f"{type(e).__name__}: {e}") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise SampleError("corrupt_image", f"image reports size {w}x{h}")
    if max_pixels and w * h > max_pixels:
        raise SampleError("image_too_large", f"{w}x{h} = {w * h} pixels > limit {max_pixels}")
    return im


def decode_image(data: bytes, draft: tuple[int, int] | None = None, mode: str = "RGB", max_pixels: int = 0, opened=None):
    """Bytes -> a loaded PIL image in `mode`, or SampleError(corrupt_image|truncated_image|...).
    `opened`: the same bytes already opened by PIL (header parsed), to skip parsing it again."""
    im = opened if opened is not None else open_header(data, max_pixels)
    try:
        if draft is not None and im.format == "JPEG":
            im.draft(mode, draft)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.load()
        im = to_rgb(im) if mode == "RGB" else (im.convert(mode) if im.mode != mode else im)
    except SampleError:
        raise
    except Exception as e:
        msg = f"{type(e).__name__}: {e}"
        reason = "truncated_image" if ("truncated" in msg or "broken data stream" in msg or "premature end" in msg.lower()) else "corrupt_image"
        raise SampleError(reason, msg) from None
    return im


def to_rgb(im):
    """A decoded PIL image -> 8-bit RGB, upright, as a person sees it: the one conversion every job
    uses (encode, infer, eval, train's pixels).
    - EXIF orientation applied (a phone photo stored sideways is turned upright);
    - 16-bit and 32-bit greyscale (`I;16*`, `I`) scaled to 8 bits by their bit depth, float (`F`)
      by its range, never clipped (PIL's own convert clips at 255: a 16-bit PNG turns white);
    - transparency (RGBA, LA, P or L with a transparent colour) composited onto white, as
      transformers' `image_transforms.convert_to_rgb` does, instead of showing whatever colour
      the transparent pixels hold;
    - CMYK, YCbCr, 1-bit, palettes: PIL's conversion."""
    from PIL import Image, ImageOps

    if im.getexif().get(0x0112, 1) != 1:  # 0x0112: EXIF Orientation
        im = ImageOps.exif_transpose(im)
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I") or im.mode == "F":
        im = _deep_to_l(im)
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _deep_to_l(im):
    """16/32-bit integer or float greyscale -> 8-bit L, scaled, not clipped."""
    import numpy as np
    from PIL import Image

    a = np.asarray(im)
    if im.mode == "F":
        lo, hi = (0.0, 1.0) if a.size and float(np.nanmin(a)) >= 0 and float(np.nanmax(a)) <= 1 else (0.0, 255.0)
        out = np.clip(np.nan_to_num(a.astype(np.float64)) / hi * 255.0, 0, 255)
    else:
        bits = 16 if im.mode.startswith("I;16") or (a.size and int(a.max()) > 255) else 8
        if a.size and int(a.max()) > 65535:
            bits = 32
        out = np.clip(a.astype(np.float64) / (2**bits - 1) * 255.0, 0, 255)
    return Image.fromarray(np.rint(out).astype(np.uint8), "L")


def parse_record(record: dict, shard: str, max_pixels: int = DEFAULT_MAX_PIXELS, objects_field: str | None = "objects") -> Sample:
    """Check a webdataset record's members and read the image header (no pixel decoding).
    `objects_field`: the json field holding the sample's object labels, checked for its type."""
    key = record.get("__key__", "?")
    image_ext = next((e for e in IMAGE_EXTS if e in record), None)
    image = record.get(image_ext) if image_ext else None
    width = height = 0
    header = None
    if image is None:
        raise SampleError("missing_image", f"members: {sorted(k for k in record if not k.startswith('__'))[:20]}")
    header = open_header(image, max_pixels)
    width, height = header.size

    caption = None
    cap_ext = next((e for e in CAPTION_EXTS if e in record), None)
    if cap_ext is None:
        raise SampleError("missing_caption")
    try:
        caption = record[cap_ext].decode("utf-8")
    except UnicodeDecodeError as e:
        raise SampleError("bad_caption_encoding", str(e)) from None
    if not caption.strip():
        raise SampleError("empty_caption")
    caption = caption.strip()

    meta = parse_json_member(record, objects_field)
    return Sample(key, shard, image, image_ext, caption, meta, width, height, record, header)


def parse_json_member(record: dict, objects_field: str | None = "objects") -> dict[str, Any]:
    """A record's json member as a dict (a non-dict value wrapped as {"value": ...}), its object
    list checked; {} without one. SampleError(bad_json|bad_metadata) otherwise."""
    if "json" not in record:
        return {}
    try:
        meta = orjson.loads(record["json"])
    except orjson.JSONDecodeError as e:
        raise SampleError("bad_json", str(e)) from None
    if not isinstance(meta, dict):
        meta = {"value": meta}
    if objects_field and objects_field in meta:
        check_objects(meta[objects_field], objects_field)
    return meta


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and abs(x) != float("inf")


LABEL_KEYS = ("name", "label", "shape", "category")  # where an object dict keeps its label


def _label(o) -> str | None:
    if isinstance(o, str):
        return o
    if isinstance(o, dict):
        return next((o[k] for k in LABEL_KEYS if isinstance(o.get(k), str)), None)
    return None


def check_objects(objects, field: str = "objects") -> None:
    """A sample's object list: labels, or dicts with a label (one of LABEL_KEYS) and optionally
    a `bbox` of four finite numbers. Anything else is SampleError("bad_metadata")."""
    if not isinstance(objects, list):
        raise SampleError("bad_metadata", f"{field} is a {type(objects).__name__}, not a list")
    for i, o in enumerate(objects):
        if _label(o) is None or (isinstance(o, str) and not o.strip()):
            raise SampleError("bad_metadata", f"{field}[{i}] is neither a label nor an object with a {'/'.join(LABEL_KEYS)}")
        if isinstance(o, str):
            continue
        box = o.get("bbox")
        if box is not None and not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            raise SampleError("bad_metadata", f"{field}[{i}].bbox is not four numbers")


def object_labels(meta: dict, field: str = "objects") -> list[str] | None:
    """The object labels of a checked sample, or None when it has no such field."""
    objects = meta.get(field)
    if objects is None:
        return None
    return [_label(o) for o in objects]
