"""The images eval asks about: samples read from shards through the core record stream (with
their object labels), or files under an --image-root, looked up by a probe's `image` name."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from vlmtool.core.records import ReadOptions, Reject, iter_samples
from vlmtool.core.samples import SampleError, decode_image, object_labels
from vlmtool.evals.answerer import ImageError


@dataclass
class EvalImage:
    name: str  # POPE's `image`: SHARD/KEY.EXT (the shard-relative name)
    key: str
    data: bytes
    labels: list[str] | None  # None: the sample has no --objects-field

    @property
    def objects(self) -> set[str]:
        return set(self.labels or ())


@dataclass
class ImageSet:
    images: list[EvalImage] = field(default_factory=list)
    samples: int = 0  # records read whole
    rejects: dict[str, int] = field(default_factory=dict)  # records the core rejected, by reason
    without_objects: int = 0
    truncated: bool = False  # stopped at --limit

    def with_objects(self) -> list[EvalImage]:
        return [im for im in self.images if im.labels is not None]


def read_images(inputs: list[str], objects_field: str = "objects", limit: int = 0, read: ReadOptions | None = None,
                progress: bool = True) -> ImageSet:
    """The samples of the shards (first `limit` readable ones when limit > 0), in input order."""
    from tqdm import tqdm

    from vlmtool.core.shards import expand_inputs, shard_refs

    out = ImageSet()
    bar = tqdm(desc="read", unit="sample", file=sys.stderr, disable=not progress, mininterval=0.5)
    try:
        for ref in shard_refs(expand_inputs(inputs)):
            for s in iter_samples(ref, read or ReadOptions(), objects_field=objects_field):
                if isinstance(s, Reject):
                    out.rejects[s.reason] = out.rejects.get(s.reason, 0) + 1
                    continue
                if limit and out.samples >= limit:
                    out.truncated = True
                    return out
                out.samples += 1
                bar.update()
                labels = object_labels(s.meta, objects_field) if objects_field else None
                out.without_objects += labels is None
                out.images.append(EvalImage(f"{s.shard}/{s.key}.{s.image_ext}", s.key, s.image_bytes or b"", labels))
    finally:
        bar.close()
    return out


def _decode(data: bytes, max_pixels: int):
    try:
        return decode_image(data, max_pixels=max_pixels)
    except SampleError as e:
        raise ImageError(e.reason, e.detail) from None


class ImageLoader:
    """A probe's `image` -> a PIL image: a file under `root` when given, else a sample of the
    shards matched by its name (SHARD/KEY.EXT), SHARD/KEY, KEY.EXT or KEY."""

    def __init__(self, images: list[EvalImage] = (), root: str | None = None, max_pixels: int = ReadOptions().max_pixels,
                 max_bytes: int = ReadOptions().max_image_bytes):
        self.root = Path(root).resolve() if root else None
        self.max_pixels, self.max_bytes = max_pixels, max_bytes
        self.by_name: dict[str, EvalImage] = {}
        for im in images:
            shard = im.name.split("/", 1)[0]
            stem = im.name.rsplit("/", 1)[-1]
            for alias in (im.name, f"{shard}/{im.key}", stem, im.key):
                self.by_name.setdefault(alias, im)

    def __call__(self, name: str):
        if self.root is None:
            im = self.by_name.get(name) or self.by_name.get(Path(name).stem)
            if im is None:
                raise ImageError("missing_image", f"no sample of the inputs is named {name!r}")
            return _decode(im.data, self.max_pixels)
        path = (self.root / name).resolve()
        if not path.is_relative_to(self.root):
            raise ImageError("bad_image_name", f"{name!r} points outside --image-root")
        if not path.is_file():
            raise ImageError("missing_image", f"{name!r} is not a file under --image-root")
        if path.stat().st_size > self.max_bytes:
            raise ImageError("member_too_large", f"{name!r} is larger than {self.max_bytes} bytes")
        return _decode(path.read_bytes(), self.max_pixels)
