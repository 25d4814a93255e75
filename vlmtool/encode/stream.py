"""The CPU side of encode, run in loader workers: records -> views -> preprocessed pixels.

EncodePrep is a core Preparer (core/batches.py): it reads encode's own records (images or
videos, a caption optional) and, as a sample may have many views (AnyRes tiles, video frames),
counts views towards the batch size: a Batch closes once its samples hold at least
`batch_size` views. The device side then runs full batches of views per shard (see job.py).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from vlmtool.core.records import ReadOptions, Reject
from vlmtool.core.samples import SampleError, decode_image
from vlmtool.core.shards import ShardRef
from vlmtool.encode.records import Item, parse, raw_records
from vlmtool.encode.views import Tower, image_views, video_views
from vlmtool.errors import UsageError


@dataclass(frozen=True)
class Payload:
    """One prepared sample: its views' pixels and its meta (without the rows, added on the device side)."""

    pixels: object  # float32 tensor [V, 3, S, S], the tower's own preprocessing
    meta: dict


class Rejected(SampleError):
    """A sample encode cannot use, with one of encode's own reasons (records.REASONS)."""

    def __init__(self, reason: str, detail: str = ""):
        Exception.__init__(self, reason)
        self.reason, self.detail = reason, detail


class EncodePrep:
    """Decode a sample, cut its views and preprocess each one with the tower's transform.
    Picklable: it goes to the loader workers."""

    def __init__(self, tower: Tower, transform, max_pixels: int, decode: str = "cpu"):
        self.tower, self.transform, self.max_pixels, self.decode = tower, transform, max_pixels, decode

    def records(self, ref: ShardRef, read: ReadOptions, objects_field=None) -> Iterator[Item | Reject]:
        """The shard's records, parsed (records.parse): Items to prepare, or Rejects."""
        for rec in raw_records(ref, read):
            yield rec if isinstance(rec, Reject) else parse(rec, ref.name)

    @staticmethod
    def size(payload: Payload) -> int:
        """What a sample counts towards a batch: its views."""
        return len(payload.pixels)

    @staticmethod
    def collate(payloads: list[Payload]):
        return collate(payloads)

    def _encoded(self, item: Item) -> Payload | None:
        """--decode device: a plain JPEG image (one whole-image view) as its bytes, with the meta
        from its header; None when it takes the CPU path (core/device_decode.py)."""
        from vlmtool.core.device_decode import encoded
        from vlmtool.core.samples import open_header

        if self.decode != "device" or item.kind != "image" or self.tower.anyres is not None:
            return None
        header = open_header(item.data, self.max_pixels)  # the CPU path's header reasons (corrupt_image, image_too_large)
        enc = encoded(header, item.data)
        if enc is None:
            return None
        _, meta = image_views(header, self.tower)
        meta = {"source": {"shard": item.url, "key": item.key, "member": f"{item.key}.{item.ext}"}, "kind": "image",
                "width": enc.width, "height": enc.height, **meta, "text": {"caption": item.caption, "meta": item.meta}}
        return Payload([enc], meta)

    def prepare(self, item: Item) -> Payload:
        import torch

        got = self._encoded(item)
        if got is not None:
            return got
        if item.kind == "image":
            img = decode_image(item.data, max_pixels=self.max_pixels)
            views, meta = image_views(img, self.tower)
            meta = {"kind": "image", "width": img.size[0], "height": img.size[1], **meta}
        else:
            views, meta = self._video(item)
            meta = {"kind": "video", "width": meta["video"]["width"], "height": meta["video"]["height"], **meta}
        px = torch.stack([self.transform(v) for v in views])  # [V, 3, S, S]
        meta = {"source": {"shard": item.url, "key": item.key, "member": f"{item.key}.{item.ext}"}, **meta,
                "text": {"caption": item.caption, "meta": item.meta}}
        return Payload(px, meta)

    def _video(self, item: Item):
        import av

        fd, path = tempfile.mkstemp(suffix="." + item.ext)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(item.data)
            try:
                return video_views(path, self.tower)
            except UsageError as e:  # budget's probe says what is wrong with the file
                raise Rejected("corrupt_video", str(e).replace(path, item.key + "." + item.ext)) from None
            except (av.FFmpegError, OSError, ValueError, IndexError, EOFError) as e:  # av errors, no frame at a timestamp
                raise Rejected("corrupt_video", f"{type(e).__name__}: {e}".replace(path, item.key + "." + item.ext)) from None
        finally:
            os.unlink(path)


def collate(payloads: list[Payload]):
    """(pixels [sum V, 3, S, S], views per sample, metas); with Encoded JPEGs among them a list of
    sum V items (core.device_decode.model_input decodes them on the device)."""
    import torch

    counts, metas = tuple(len(p.pixels) for p in payloads), tuple(p.meta for p in payloads)
    if any(isinstance(p.pixels, list) for p in payloads):  # --decode device: Encoded JPEGs and CPU-path views, in order
        return [v for p in payloads for v in (p.pixels if isinstance(p.pixels, list) else p.pixels.unbind(0))], counts, metas
    return torch.cat([p.pixels for p in payloads]), counts, metas
