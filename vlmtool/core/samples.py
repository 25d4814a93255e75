"""webdataset records -> typed samples, and the reasons a sample is rejected.

A record that cannot become a sample raises SampleError with one of REASONS; the batch core
counts it, logs it (shard, key, reason, detail) and goes on, or stops under --strict.
"""

from __future__ import annotations

import io
import tarfile
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

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
    "broken_tar": "the tar file ends or breaks inside this record",
    "filtered": "a pre-filter of the job excluded the sample",
}


class SampleError(Exception):
    def __init__(self, reason: str, detail: str = ""):
        assert reason in REASONS or reason.startswith("filter:"), reason
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


def _open_header(data: bytes, max_pixels: int):
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
    im = opened if opened is not None else _open_header(data, max_pixels)
    try:
        if draft is not None and im.format == "JPEG":
            im.draft(mode, draft)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.load()
        if im.mode != mode:
            im = im.convert(mode)
    except SampleError:
        raise
    except Exception as e:
        msg = f"{type(e).__name__}: {e}"
        reason = "truncated_image" if ("truncated" in msg or "broken data stream" in msg or "premature end" in msg.lower()) else "corrupt_image"
        raise SampleError(reason, msg) from None
    return im


def parse_record(
    record: dict,
    shard: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    need_image: bool = True,
    need_caption: bool = True,
) -> Sample:
    """Check a webdataset record's members and read the image header (no pixel decoding)."""
    key = record.get("__key__", "?")
    image_ext = next((e for e in IMAGE_EXTS if e in record), None)
    image = record.get(image_ext) if image_ext else None
    width = height = 0
    header = None
    if image is None:
        if need_image:
            raise SampleError("missing_image", f"members: {sorted(k for k in record if not k.startswith('__'))}")
    else:
        header = _open_header(image, max_pixels)
        width, height = header.size

    caption = None
    cap_ext = next((e for e in CAPTION_EXTS if e in record), None)
    if cap_ext is None:
        if need_caption:
            raise SampleError("missing_caption")
    else:
        try:
            caption = record[cap_ext].decode("utf-8")
        except UnicodeDecodeError as e:
            raise SampleError("bad_caption_encoding", str(e)) from None
        if need_caption and not caption.strip():
            raise SampleError("empty_caption")
        caption = caption.strip()

    meta: dict[str, Any] = {}
    if "json" in record:
        try:
            meta = orjson.loads(record["json"])
        except orjson.JSONDecodeError as e:
            raise SampleError("bad_json", str(e)) from None
        if not isinstance(meta, dict):
            meta = {"value": meta}
    return Sample(key, shard, image, image_ext, caption, meta, width, height, record, header)


@dataclass
class BrokenTar:
    """Marks the point where a shard could not be read further."""

    key: str | None
    detail: str


def read_shard(url: str) -> Iterator[dict | BrokenTar]:
    """Yield the records of one tar shard in order; a read error ends the shard with BrokenTar.

    The record being assembled when the tar broke is reported inside the BrokenTar (its members
    may be incomplete), never yielded as if it were whole.
    """
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    errors: list[Exception] = []

    def stop(exn: Exception) -> bool:
        errors.append(exn)
        return False

    def members(stream):
        try:
            for m in tar_file_iterator(stream, handler=stop):
                m["__url__"] = url
                yield m
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            errors.append(e)

    pending: dict | None = None
    try:
        from vlmtool.core.shards import open_input

        stream = open_input(url)
    except Exception as e:
        yield BrokenTar(None, f"cannot open: {type(e).__name__}: {e}")
        return
    try:
        for rec in group_by_keys(members(stream), handler=stop):
            if pending is not None:
                yield pending
            pending = rec
        if errors:
            key = pending["__key__"] if pending is not None else None
            yield BrokenTar(key, f"{type(errors[0]).__name__}: {errors[0].args[0] if errors[0].args else errors[0]}")
        elif pending is not None:
            yield pending
    finally:
        stream.close()
