"""Budget a whole dataset from image headers: files, folders, webdataset shards, lists on stdin.

Only headers are read (PIL parses the size lazily from the first bytes; tar members are opened
in place and read no further than the header), so this runs at disk speed. An unreadable image
is a row with its error, never a crash.
"""

from __future__ import annotations

import io
import itertools
import math
import os
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from vlmtool.budget import _freeze, _plan
from vlmtool.budget.video import VIDEO_EXTS
from vlmtool.errors import UsageError, VlmtoolError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
TAR_SUFFIXES = (".tar",)
TOKEN_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "int4": 0.5}


@dataclass(slots=True)
class Item:
    source: str
    width: int = 0
    height: int = 0
    error: str | None = None


def header_size(fp) -> tuple[int, int]:
    """(width, height) from an image's header; raises ValueError with the reason."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we only read its size
            with Image.open(fp) as im:  # lazy: reads the header, not the pixels
                return im.size
    except Image.DecompressionBombError:
        raise
    except Exception as e:
        raise ValueError(f"{type(e).__name__}: {e}") from None


def _from_tar(path: str) -> Iterator[Item]:
    from vlmtool.budget.headers import fast_size
    from vlmtool.core.tarscan import Fallback, tar_members

    try:
        members = tar_members(path, IMAGE_SUFFIXES)  # fast path: plain ustar over a memory map, image members only
        first = next(members, None)
    except (Fallback, OSError):
        yield from _from_tar_slow(path)
        return
    if first is None:
        return
    for name, data in itertools.chain([first], members):
        size = fast_size(data)
        if size is not None:
            yield Item(path + ":" + name, size[0], size[1])
            continue
        try:
            yield Item(f"{path}:{name}", *header_size(io.BytesIO(data)))
        except Exception as e:
            yield Item(f"{path}:{name}", error=str(e))


def _from_tar_slow(path: str) -> Iterator[Item]:
    try:
        tf = tarfile.open(path, "r:")
    except (tarfile.TarError, OSError) as e:
        yield Item(path, error=f"unreadable tar: {e}")
        return
    with tf:
        try:
            for m in tf:
                if not m.isfile() or not m.name.lower().endswith(IMAGE_SUFFIXES):
                    continue
                src = f"{path}:{m.name}"
                try:
                    f = tf.extractfile(m)
                    yield Item(src, *header_size(f))
                except Exception as e:
                    yield Item(src, error=str(e))
        except (tarfile.TarError, OSError, EOFError) as e:
            yield Item(path, error=f"broken tar: {e}")


def _from_file(path: str) -> Iterator[Item]:
    from vlmtool.budget.headers import fast_size

    try:
        with open(path, "rb") as f:
            size = fast_size(f.read(65536))
            if size is None:
                f.seek(0)
                size = header_size(f)
        yield Item(path, *size)
    except Exception as e:
        yield Item(path, error=str(e))


def iter_items(inputs: list[str], stdin=None) -> Iterator[Item]:
    """Images from files, folders (recursively, sorted), tar shards, and `-` (paths on stdin)."""
    for spec in inputs:
        if spec == "-":
            for line in (stdin or sys.stdin):
                line = line.strip()
                if line and not line.startswith("#"):
                    yield from iter_items([line])
            continue
        p = Path(spec)
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for name in sorted(files):
                    full = os.path.join(root, name)
                    if name.lower().endswith(TAR_SUFFIXES):
                        yield from _from_tar(full)
                    elif name.lower().endswith(IMAGE_SUFFIXES):
                        yield from _from_file(full)
        elif not p.exists():
            yield Item(spec, error="no such file")
        elif spec.lower().endswith(TAR_SUFFIXES):
            yield from _from_tar(spec)
        else:
            yield from _from_file(spec)


def split_inputs(inputs: list[str]) -> tuple[list[str], list[str]]:
    """Video files apart from everything else."""
    videos = [i for i in inputs if i.lower().endswith(VIDEO_EXTS)]
    return videos, [i for i in inputs if i not in videos]


@dataclass
class Stats:
    counts: list[int] = field(default_factory=list)
    errors: int = 0

    def summary(self) -> dict:
        c = sorted(self.counts)
        n = len(c)
        if not n:
            return {"images": 0, "errors": self.errors, "total": 0}

        def pct(q: float) -> int:  # nearest-rank percentile
            return c[max(0, math.ceil(q * n) - 1)]

        hist: dict[str, int] = {}
        for v in c:
            key = next((f"<={b}" for b in TOKEN_BUCKETS if v <= b), f">{TOKEN_BUCKETS[-1]}")
            hist[key] = hist.get(key, 0) + 1
        return {"images": n, "errors": self.errors, "total": sum(c), "mean": round(sum(c) / n, 2), "p50": pct(0.5),
                "p95": pct(0.95), "max": c[-1], "min": c[0], "histogram": hist}


def kv_cache_bytes(tokens: int, layers: int, kv_heads: int, head_dim: int, dtype: str = "bf16") -> int:
    """K and V for every layer: 2 x layers x kv_heads x head_dim x bytes x tokens."""
    if dtype not in DTYPE_BYTES:
        raise UsageError(f"unknown KV dtype {dtype!r}: use one of {', '.join(DTYPE_BYTES)}")
    return int(2 * layers * kv_heads * head_dim * DTYPE_BYTES[dtype] * tokens)


def budget_dataset(inputs: list[str], presets: list[str], options: dict[str, dict], rows_out=None, progress: bool = True,
                   stdin=None) -> dict:
    """Per-preset totals over every image; with rows_out, one JSON row per image and preset."""
    from tqdm import tqdm

    from vlmtool.core.shards import dumps

    stats = {p: Stats() for p in presets}
    frozen = {p: tuple(sorted((k, _freeze(v)) for k, v in options.get(p, {}).items())) for p in presets}
    bad: list[dict] = []
    n_items = 0
    bar = tqdm(desc="budget", unit="img", file=sys.stderr, disable=not progress, mininterval=0.5)
    for item in iter_items(inputs, stdin):
        n_items += 1
        if n_items % 256 == 0:
            bar.update(256)
        if item.error:
            bad.append({"source": item.source, "error": item.error})
            for p in presets:
                stats[p].errors += 1
            if rows_out is not None:
                rows_out.write(dumps({"source": item.source, "error": item.error, "tokens": None}) + b"\n")
            continue
        for p in presets:
            try:
                plan = _plan(p, item.width, item.height, frozen[p])  # image_plan's cache, key made once
            except VlmtoolError as e:
                stats[p].errors += 1
                row = {"source": item.source, "model": p, "width": item.width, "height": item.height, "tokens": None, "error": str(e)}
                if len(bad) < 1000:
                    bad.append(row)
                if rows_out is not None:
                    rows_out.write(dumps(row) + b"\n")
                continue
            stats[p].counts.append(plan.tokens)
            if rows_out is not None:
                rows_out.write(dumps({"source": item.source, "model": p, "width": item.width, "height": item.height,
                                      "tokens": plan.tokens, "wrapper_tokens": plan.wrapper_tokens}) + b"\n")
    bar.update(n_items % 256)
    bar.close()
    return {"items": n_items, "models": {p: stats[p].summary() for p in presets}, "errors": bad[:50], "errors_total": len(bad)}


def draw_plan(plan, out: str | Path, image_path: str | None = None) -> str:
    """A PNG of the image (or a grey canvas of its size) with each part's box and tokens."""
    from PIL import Image, ImageDraw

    if image_path:
        im = Image.open(image_path).convert("RGB")
    else:
        im = Image.new("RGB", (plan.width, plan.height), (200, 200, 200))
    scale = min(1.0, 1600 / max(im.size))
    if scale < 1:
        im = im.resize((max(1, int(im.width * scale)), max(1, int(im.height * scale))))
    d = ImageDraw.Draw(im, "RGBA")
    colors = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]
    lw = max(1, int(min(im.size) / 150))
    for i, part in enumerate(p for p in plan.parts if p.box is not None and p.name in ("tile", "crop", "patches")):
        x0, y0, x1, y1 = (v * scale for v in part.box)
        c = colors[i % len(colors)]
        d.rectangle((x0, y0, x1 - 1, y1 - 1), outline=c + (255,), width=lw, fill=c + (40,))
        d.text((x0 + lw + 2, y0 + lw + 2), f"{part.grid[0]},{part.grid[1]}: {part.tokens}" if part.grid else str(part.tokens), fill=(0, 0, 0, 255))
    extra = [f"{p.name} {p.tokens}" for p in plan.parts if p.name not in ("tile", "crop", "patches")]
    d.text((4, im.height - 14), f"{plan.preset}: {plan.tokens} tokens" + (f" ({', '.join(extra)})" if extra else ""), fill=(0, 0, 0, 255))
    out = Path(out)
    from vlmtool.core.shards import atomic_path

    with atomic_path(out) as tmp:
        im.save(tmp, format="PNG")
    return str(out)

