"""`vlmtool inspect`: what is in a set of shards (fields, image sizes, caption lengths, broken
samples by reason). The first job on the core: resumable and rank-aware like every other."""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field

from vlmtool.core.batches import Batch, ReadOptions, finish, run_shards
from vlmtool.core.samples import Sample
from vlmtool.core.shards import JobDir, expand_inputs, shard_refs

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


def run_inspect(inputs: list[str], out: str | None = None, *, workers: int = 0, batch_size: int = 64,
                strict: bool = False, max_pixels: int | None = None, progress: bool = True) -> dict:
    refs = shard_refs(expand_inputs(inputs))
    read = ReadOptions(**({"max_pixels": max_pixels} if max_pixels is not None else {}))
    args = {"inputs": inputs, "workers": workers, "batch_size": batch_size, "strict": strict, "max_pixels": read.max_pixels}
    tmp = None
    if out is None:  # a quick look: nothing to resume, so a throwaway folder
        tmp = tempfile.TemporaryDirectory(prefix="vlmtool-inspect-")
        out = tmp.name
    try:
        job = JobDir(out, "inspect", args, refs)
        run = run_shards(job, InspectPrep(), lambda ref: InspectSink(), batch_size=batch_size, workers=workers,
                         strict=strict, read=read, progress=progress, desc="inspect")
        summary = finish(job, run, summarize)
    finally:
        if tmp is not None:
            tmp.cleanup()
    if tmp is not None:
        summary["out"] = None
    return summary
