"""Budget a whole dataset from image headers: files, folders, webdataset shards, lists on stdin.

Only headers are read (PIL parses the size lazily from the first bytes; tar members are opened
in place and read no further than the header), so this runs at disk speed. An unreadable image
is a row with its error, never a crash.
"""

from __future__ import annotations

import io
import itertools
import math
import re
import sys
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vlmtool.budget import image_counter
from vlmtool.core.shards import expand_inputs, is_stream, open_input
from vlmtool.errors import UsageError, VlmtoolError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v")
AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".ogg", ".opus", ".m4a", ".aac")
INPUT_SUFFIXES = IMAGE_SUFFIXES + TAR_SUFFIXES + VIDEO_SUFFIXES + AUDIO_SUFFIXES
TOKEN_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "int4": 0.5}
# An image header may declare any size up to 2^31-1 a side; counting is arithmetic, so this cap
# only says what is believable (65536 x 65536). Larger is the reject reason `too_large`.
DEFAULT_MAX_IMAGE_PIXELS = 1 << 32
MAX_ERRORS_KEPT = 50
HEADER_READ_CAP = 16 << 20  # the most bytes read from a stream to find an image's size


@dataclass(slots=True)
class Item:
    source: str
    width: int = 0
    height: int = 0
    error: str | None = None
    reason: str | None = None  # unreadable_image, too_large; broken_tar, unreadable_input (the input failed)

    @property
    def input_failed(self) -> bool:
        return self.reason in ("broken_tar", "unreadable_input")


def _message(e: BaseException) -> str:
    """An error as one line, without memory addresses (identical runs give identical reports)."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", f"{type(e).__name__}: {e}").replace("\n", " ")


class TooLarge(ValueError):
    """An image whose declared size is past the cap."""


def header_size(fp) -> tuple[int, int]:
    """(width, height) from an image's header (PIL reads the header only); ValueError with the reason."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we only read its size
            with Image.open(fp) as im:  # lazy: reads the header, not the pixels
                return im.size
    except Image.DecompressionBombError as e:  # past twice PIL's limit (JPEG and PNG sizes come from headers.py)
        raise TooLarge(_message(e)) from None
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds for a bad header: each is a reject reason
        raise ValueError(_message(e)) from None


def _image(source: str, data: bytes, fp, max_image_pixels: int) -> Item:
    from vlmtool.budget.headers import fast_size

    try:
        size = fast_size(data)
        if size is None:
            size = header_size(fp if fp is not None else io.BytesIO(data))
    except ValueError as e:
        return Item(source, error=str(e), reason="too_large" if isinstance(e, TooLarge) else "unreadable_image")
    w, h = size
    if w * h > max_image_pixels:
        return Item(source, w, h, error=f"{w}x{h} = {w * h} pixels > --max-image-pixels {max_image_pixels}", reason="too_large")
    return Item(source, w, h)


def _from_tar(path: str, max_image_pixels: int) -> Iterator[Item]:
    from vlmtool.core.tarscan import Fallback, tar_members

    if is_stream(path):
        yield from _from_tar_slow(path, max_image_pixels)
        return
    try:
        members = tar_members(path, IMAGE_SUFFIXES)  # fast path: plain ustar over a memory map, image members only
        first = next(members, None)
    except (Fallback, OSError):
        yield from _from_tar_slow(path, max_image_pixels)
        return
    for name, data in itertools.chain([first], members) if first is not None else ():
        yield _image(f"{path}:{name}", data, None, max_image_pixels)


def _from_tar_slow(path: str, max_image_pixels: int) -> Iterator[Item]:
    """tarfile over open_input: compressed tars, pax/GNU headers, cut tars and streams."""
    from vlmtool.budget.headers import fast_size

    try:
        with open_input(path) as f, tarfile.open(fileobj=f, mode="r|*") as tf:
            for m in tf:
                if m.isfile() and m.name.lower().endswith(IMAGE_SUFFIXES):
                    fp = tf.extractfile(m)
                    data = fp.read(65536)
                    more = None if fast_size(data) else io.BytesIO(data + fp.read(HEADER_READ_CAP))  # PIL may need more
                    yield _image(f"{path}:{m.name}", data, more, max_image_pixels)
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:  # a cut tar, a failing pipe
        yield Item(path, error=f"broken tar: {_message(e)}", reason="broken_tar")


def read_image(path: str, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Item:
    """One image file's size from its header (opened with open_input), or the reject reason."""
    try:
        with open_input(path) as f:
            data = f.read(65536)
            if getattr(f, "seekable", lambda: False)():
                f.seek(0)
                return _image(path, data, f, max_image_pixels)
            # a stream: PIL may need more than the first 64 KiB of a header; never more than the cap
            return _image(path, data, io.BytesIO(data + f.read(HEADER_READ_CAP)), max_image_pixels)
    except OSError as e:
        return Item(path, error=f"cannot read: {_message(e)}", reason="unreadable_input")


def iter_items(inputs: list[str], stdin=None, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Iterator[Item]:
    """Images from the inputs as every job takes them (core's expand_inputs: files, folders, brace
    patterns, globs, `-` for names on stdin, pipe:/URL streams): image files and tar shards.
    Video and audio inputs are for split_inputs' callers; pass the rest."""
    for path in expand_inputs(inputs, stdin, INPUT_SUFFIXES):
        if path.lower().endswith(TAR_SUFFIXES) or (is_stream(path) and not path.lower().endswith(IMAGE_SUFFIXES)):
            yield from _from_tar(path, max_image_pixels)  # a stream is a shard unless it names an image
        else:  # an image, or a file named on its own whatever its suffix: its header says what it is
            yield read_image(path, max_image_pixels)


def split_inputs(paths: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(videos, audio, everything else) of expanded input names."""
    videos = [p for p in paths if p.lower().endswith(VIDEO_SUFFIXES)]
    audio = [p for p in paths if p.lower().endswith(AUDIO_SUFFIXES)]
    return videos, audio, [p for p in paths if p not in videos and p not in audio]


@dataclass
class Stats:
    """Counts per token value (memory bounded by the distinct counts, not the images)."""

    counts: Counter = field(default_factory=Counter)
    billed: float = 0.0
    errors: int = 0

    def summary(self) -> dict:
        n = sum(self.counts.values())
        if not n:
            return {"images": 0, "errors": self.errors, "total": 0, "billed": 0}
        values = sorted(self.counts.items())

        def pct(q: float) -> int:  # nearest-rank percentile
            rank, seen = max(1, math.ceil(q * n)), 0
            for v, k in values:
                seen += k
                if seen >= rank:
                    return v
            return values[-1][0]

        hist: Counter = Counter()
        for v, k in values:
            hist[next((f"<={b}" for b in TOKEN_BUCKETS if v <= b), f">{TOKEN_BUCKETS[-1]}")] += k
        total = sum(v * k for v, k in values)
        return {"images": n, "errors": self.errors, "total": total, "billed": round(self.billed, 2), "mean": round(total / n, 2),
                "p50": pct(0.5), "p95": pct(0.95), "max": values[-1][0], "min": values[0][0], "histogram": dict(hist)}


def kv_cache_bytes(tokens: int, layers: int, kv_heads: int, head_dim: int, dtype: str = "bf16") -> int:
    """K and V for every layer: 2 x layers x kv_heads x head_dim x bytes x tokens."""
    if dtype not in DTYPE_BYTES:
        raise UsageError(f"unknown KV dtype {dtype!r}: use one of {', '.join(DTYPE_BYTES)}")
    return int(2 * layers * kv_heads * head_dim * DTYPE_BYTES[dtype] * tokens)


def _row(item: Item, model: str | None = None, **extra) -> dict:
    return {"source": item.source, **({"model": model} if model else {}), "width": item.width or None, "height": item.height or None, **extra}


def budget_dataset(inputs: list[str], presets: list[str], options: dict[str, dict], rows_out=None, progress: bool = True,
                   stdin=None, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> dict:
    """Per-preset totals over every image; with rows_out, one JSON row per image and preset.

    An unreadable or too-large image is a counted reject (`rejects`); an input that cannot be
    read at all (a broken tar, a failing pipe) is counted in `inputs_failed`."""
    from tqdm import tqdm

    from vlmtool.core.shards import dumps

    counters = {p: image_counter(p, **options.get(p, {})) for p in presets}  # options checked once, here
    stats = {p: Stats() for p in presets}
    rejects: Counter = Counter()
    bad: list[dict] = []
    failed_inputs: set[str] = set()
    n_items = 0

    def reject(row: dict, reason: str) -> None:
        rejects[reason] += 1
        if len(bad) < MAX_ERRORS_KEPT:
            bad.append({**row, "reason": reason})
        if rows_out is not None:
            rows_out.write(dumps({**row, "tokens": None, "reason": reason}) + b"\n")

    with tqdm(desc="budget", unit="img", file=sys.stderr, disable=not progress, mininterval=0.5) as bar:
        for item in iter_items(inputs, stdin, max_image_pixels):
            if item.input_failed:
                failed_inputs.add(item.source)
                reject({"source": item.source, "error": item.error}, item.reason)
                continue
            n_items += 1
            bar.update()
            if item.error:
                for p in presets:
                    stats[p].errors += 1
                reject(_row(item, error=item.error), item.reason)
                continue
            for p in presets:
                try:
                    plan = counters[p](item.width, item.height)
                except VlmtoolError as e:
                    stats[p].errors += 1
                    reject(_row(item, p, error=str(e)), "refused")
                    continue
                stats[p].counts[plan.tokens] += 1
                stats[p].billed += plan.billed_tokens
                if rows_out is not None:
                    rows_out.write(dumps(_row(item, p, tokens=plan.tokens, wrapper_tokens=plan.wrapper_tokens)) + b"\n")
    return {"items": n_items, "inputs_failed": sorted(failed_inputs), "rejects": dict(sorted(rejects.items())),
            "models": {p: stats[p].summary() for p in presets}, "errors": bad, "errors_total": sum(rejects.values())}


def draw_plan(plan, out: str | Path, image_path: str | None = None) -> str:
    """A PNG of the image (or a grey canvas of its size) with each part's box and tokens."""
    from PIL import Image, ImageDraw

    scale = min(1.0, 1600 / max(plan.width, plan.height))
    size = (max(1, round(plan.width * scale)), max(1, round(plan.height * scale)))
    im = None
    if image_path and plan.width * plan.height <= Image.MAX_IMAGE_PIXELS:  # a larger photo: its boxes on a canvas
        from vlmtool.core.shards import open_input

        with open_input(image_path) as f, Image.open(f) as src:
            src.draft("RGB", size)  # JPEG: decode at the drawing size
            im = src.convert("RGB").resize(size)
    if im is None:
        im = Image.new("RGB", size, (200, 200, 200))  # at the drawing size, never the image's
    d = ImageDraw.Draw(im, "RGBA")
    colors = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]
    lw = max(1, int(min(im.size) / 150))
    for i, part in enumerate(p for p in plan.parts if p.box is not None and p.name in ("tile", "crop", "patches")):
        x0, y0, x1, y1 = (v * scale for v in part.box)
        c = colors[i % len(colors)]
        d.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=c + (255,), width=lw, fill=c + (40,))
        d.text((x0 + lw + 2, y0 + lw + 2), f"{part.grid[0]},{part.grid[1]}: {part.tokens}" if part.grid else str(part.tokens), fill=(0, 0, 0, 255))
    extra = [f"{p.name} {p.tokens}" for p in plan.parts if p.name not in ("tile", "crop", "patches")]
    d.text((4, im.height - 14), f"{plan.preset}: {plan.tokens} tokens" + (f" ({', '.join(extra)})" if extra else ""), fill=(0, 0, 0, 255))
    out = Path(out)
    from vlmtool.core.shards import atomic_path

    with atomic_path(out) as tmp:
        im.save(tmp, format="PNG")
    return str(out)

