"""The records encode reads: shard records with an image or a video (a caption is optional), and
plain image or video files given as inputs (each one a shard of one sample, keyed by its
stem). The core's sample stream needs an image and a caption; encode reads the core's raw
records (`core.records.tar_records`, with all its tar fault handling) and parses them here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field


from vlmtool.core.records import ReadOptions, Reject, tar_records
from vlmtool.core.samples import CAPTION_EXTS, IMAGE_EXTS, SampleError, parse_json_member
from vlmtool.core.shards import SHARD_SUFFIXES, ShardRef

VIDEO_EXTS = ("mp4", "webm", "mkv", "mov", "avi")
MEDIA_SUFFIXES = tuple(f".{e}" for e in IMAGE_EXTS + VIDEO_EXTS)
INPUT_SUFFIXES = SHARD_SUFFIXES + MEDIA_SUFFIXES
REASONS = {
    "missing_media": "the record has neither an image nor a video member",
    "corrupt_video": "the video cannot be probed or decoded, or no frame of the plan decodes",
    "nonfinite_features": "the tower gave a non-finite feature (inf or nan) for a view",
}


@dataclass
class Item:
    """One sample to encode: its media bytes, and its text (caption and metadata, either may be None)."""

    key: str
    kind: str  # "image" or "video"
    ext: str
    data: bytes
    caption: str | None = None
    meta: dict = field(default_factory=dict)
    url: str = ""  # the shard (or media file) it came from, as the user gave it


def is_media_file(url: str) -> bool:
    return url.lower().endswith(MEDIA_SUFFIXES) and not url.lower().endswith(SHARD_SUFFIXES)


def raw_records(ref: ShardRef, read: ReadOptions) -> Iterator[dict | Reject]:
    """A shard's raw records, or the one record of a plain image or video file."""
    if not is_media_file(ref.url):
        yield from tar_records(ref, read)
        return
    ext = ref.url.rsplit(".", 1)[-1].lower()
    key = os.path.basename(ref.url).rsplit(".", 1)[0]
    try:
        size = os.path.getsize(ref.url)
        if size > read.cap(ext):
            yield Reject(ref.name, key, "member_too_large", f"{ref.url}: {size} bytes > cap {read.cap(ext)}")
            return
        with open(ref.url, "rb") as f:
            data = f.read()
    except OSError as e:
        yield Reject(ref.name, key, "broken_tar", f"cannot read {ref.url}: {e.strerror or e}")
        return
    yield {"__key__": key, "__url__": ref.url, ext: data}


def _text(rec: dict) -> tuple[str | None, dict]:
    """The caption (None when there is none, or it is blank) and the json metadata, checked."""
    caption = None
    cap_ext = next((e for e in CAPTION_EXTS if e in rec), None)
    if cap_ext is not None:
        try:
            caption = rec[cap_ext].decode("utf-8").strip() or None
        except UnicodeDecodeError as e:
            raise SampleError("bad_caption_encoding", str(e)) from None
    return caption, parse_json_member(rec)


def parse(rec: dict, shard: str) -> Item | Reject:
    """A raw record -> an Item (an image first, else a video), or a Reject with its reason."""
    key = rec["__key__"]
    try:
        caption, meta = _text(rec)
    except SampleError as e:
        return Reject(shard, key, e.reason, e.detail)
    for kind, exts in (("image", IMAGE_EXTS), ("video", VIDEO_EXTS)):
        ext = next((e for e in exts if e in rec), None)
        if ext is not None:
            return Item(key, kind, ext, rec[ext], caption, meta, rec.get("__url__", ""))
    return Reject(shard, key, "missing_media", f"members: {sorted(k for k in rec if not k.startswith('__'))[:20]}")
