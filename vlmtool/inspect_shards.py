"""`vlmtool inspect`: what is in a set of shards (fields, image sizes, caption lengths, broken
samples by reason). The first job on the core: resumable and rank-aware like every other."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from vlmtool.core.batches import Batch, run_shards
from vlmtool.core.executors import ExecutorOptions, record_stats, run_records, shard_records, uses_ray
from vlmtool.core.job import Job
from vlmtool.core.options import MAX_IMAGE_BYTES, MAX_PIXELS, MAX_TEXT_BYTES, PROGRESS, STRICT, WORKERS, option
from vlmtool.core.records import ReadOptions
from vlmtool.core.samples import Sample
from vlmtool.core.shards import expand_inputs, shard_refs

SIDE_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096)
WORD_BUCKETS = (5, 10, 20, 40, 80)


def _bucket(value: int, edges: tuple[int, ...]) -> str:
    for e in edges:
        if value <= e:
            return f"<={e}"
    return f">{edges[-1]}"


class InspectPrep:
    """Decode each image fully (at JPEG draft scale: every entropy-coded byte is still read, so
    truncation and corruption show) and measure the sample."""

    def prepare(self, s: Sample) -> tuple:
        s.load_image(draft=(1, 1))
        fields = tuple(sorted(k for k in s.record if not k.startswith("__")))
        cap = s.caption or ""
        return (s.width, s.height, len(cap), len(cap.split()), fields, s.image_ext)

    def collate(self, payloads: list) -> list:
        return payloads


@dataclass
class InspectSink:
    fields: Counter = field(default_factory=Counter)
    formats: Counter = field(default_factory=Counter)
    max_side: Counter = field(default_factory=Counter)
    shape: Counter = field(default_factory=Counter)
    words: Counter = field(default_factory=Counter)
    n: int = 0
    w_sum: int = 0
    h_sum: int = 0
    chars_sum: int = 0
    words_sum: int = 0
    min_side: int | None = None
    max_pixels: int = 0

    def add(self, batch: Batch, results: list | None) -> None:
        for w, h, chars, words, fields, ext in results or []:
            self.n += 1
            self.fields.update(fields)
            self.formats[ext] += 1
            self.max_side[_bucket(max(w, h), SIDE_BUCKETS)] += 1
            self.shape["tall" if h > 1.5 * w else "wide" if w > 1.5 * h else "squarish"] += 1
            self.words[_bucket(words, WORD_BUCKETS)] += 1
            self.w_sum += w
            self.h_sum += h
            self.chars_sum += chars
            self.words_sum += words
            self.min_side = min(w, h) if self.min_side is None else min(self.min_side, w, h)
            self.max_pixels = max(self.max_pixels, w * h)

    def commit(self) -> dict:
        return {"stats": {"n": self.n, "fields": dict(self.fields), "formats": dict(self.formats), "max_side": dict(self.max_side),
                          "shape": dict(self.shape), "caption_words": dict(self.words), "w_sum": self.w_sum, "h_sum": self.h_sum,
                          "chars_sum": self.chars_sum, "words_sum": self.words_sum, "min_side": self.min_side, "max_pixels": self.max_pixels}}

    def abort(self) -> None:
        pass


def summarize(records: dict[str, dict]) -> dict:
    agg: dict[str, Counter] = {k: Counter() for k in ("fields", "formats", "max_side", "shape", "caption_words")}
    n = w = h = chars = words = max_px = 0
    min_side = None
    for rec in records.values():
        st = rec.get("stats", {})
        for k in agg:
            agg[k].update(st.get(k, {}))
        n += st.get("n", 0)
        w += st.get("w_sum", 0)
        h += st.get("h_sum", 0)
        chars += st.get("chars_sum", 0)
        words += st.get("words_sum", 0)
        max_px = max(max_px, st.get("max_pixels", 0))
        if st.get("min_side") is not None:
            min_side = st["min_side"] if min_side is None else min(min_side, st["min_side"])
    order = lambda c, edges: {k: c[k] for k in [f"<={e}" for e in edges] + [f">{edges[-1]}"] if k in c}  # noqa: E731
    return {
        "fields": dict(agg["fields"].most_common()),
        "formats": dict(agg["formats"].most_common()),
        "images": {"mean_width": round(w / n, 1) if n else None, "mean_height": round(h / n, 1) if n else None,
                   "min_side": min_side, "max_pixels": max_px, "max_side": order(agg["max_side"], SIDE_BUCKETS),
                   "shape": dict(agg["shape"])},
        "captions": {"mean_chars": round(chars / n, 1) if n else None, "mean_words": round(words / n, 2) if n else None,
                     "words": order(agg["caption_words"], WORD_BUCKETS)},
    }


@dataclass(frozen=True)
class InspectOptions(ExecutorOptions):
    """`vlmtool inspect`'s options (see its --help)."""

    max_pixels: int = MAX_PIXELS()
    max_image_bytes: int = MAX_IMAGE_BYTES()
    max_text_bytes: int = MAX_TEXT_BYTES()
    batch_size: int = option(64, "Samples per batch handed from the loader workers.", flags=("--batch-size", "-b"), min=1, free=True)
    workers: int = WORKERS(2)
    strict: bool = STRICT()
    progress: bool = PROGRESS()

    def read(self) -> ReadOptions:
        return ReadOptions.of(self)


def run_inspect(inputs: list[str], out: str | None = None, opts: InspectOptions = InspectOptions()) -> dict:
    uses_ray(opts)  # a usage error before any folder is made
    refs = shard_refs(expand_inputs(inputs))
    if out is not None:
        with Job("inspect", out, opts, refs) as job:
            return _inspect(job, opts)
    _remove_dead_scratch()
    with tempfile.TemporaryDirectory(prefix=f"{_SCRATCH}{os.getpid()}-") as tmp:  # a quick look: nothing to resume
        with Job("inspect", tmp, opts, refs) as job:
            return {**_inspect(job, opts), "out": None}


def _inspect(job: Job, opts: InspectOptions) -> dict:
    records = job.records()
    if uses_ray(opts):
        run, _ = run_records(opts, records, InspectWorker(str(job.out), opts), "inspect", progress=opts.progress)
    else:
        run = _run(records, opts, opts.progress)
    return job.finish(records, run, summarize)


def _run(records, opts: InspectOptions, progress: bool):
    return run_shards(records, InspectPrep(), lambda ref: InspectSink(), batch_size=opts.batch_size, workers=opts.workers,
                      strict=opts.strict, read=opts.read(), progress=progress, desc="inspect")


@dataclass(frozen=True)
class InspectWorker:
    """One shard of inspect, in a Ray actor (core/executors.py)."""

    out: str
    opts: InspectOptions

    def setup(self) -> dict:
        return {}

    def run(self, ref, arg=None) -> dict:
        records = shard_records(self.out, "inspect", ref)
        _run(records, self.opts, progress=False)
        return record_stats(records, ref)


_SCRATCH = "vlmtool-inspect-"


def _remove_dead_scratch() -> None:
    """Scratch folders of quick inspects that were killed (their process is gone)."""
    import shutil

    for p in Path(tempfile.gettempdir()).glob(f"{_SCRATCH}*-*"):
        pid = p.name[len(_SCRATCH):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
