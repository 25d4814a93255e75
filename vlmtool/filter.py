"""`vlmtool filter`: CLIP-score image-caption shards and keep the pairs that match.

Two passes over the job folder, each resumable per shard:
1. score: loader workers decode and preprocess (cheap pre-filters first), the model scores
   every pair (cosine of the normalized embeddings) in batches on the device; each shard's
   rows go to `_scores/SHARD.jsonl` in tar order, rejected samples with their reason.
2. select: once every shard is scored (a barrier through the job folder, so ranks and separate
   launches agree), the threshold is `--min-score`, or the score that keeps `--keep-fraction`
   of all valid samples over all shards and ranks (ties broken by shard and position). Each
   shard is re-read without the model and the kept records are copied, original bytes and
   keys, to `shards/SHARD.tar`.
The rank that finishes last writes `scores.jsonl` (one row per sample seen: key, shard, score,
kept, reason), `report.json` (kept fraction, histogram, modality gap; `--plot` adds
report.png) and `manifest.json`. Model, pretrained, preprocessing and precision are recorded
with the scores: CLIP scores are only comparable when all four match.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

import orjson

from dataclasses import MISSING, dataclass

from vlmtool.core.batches import Batch, merge_totals, run_shards
from vlmtool.core.executors import ExecutorOptions, record_stats, run_records, shard_records, uses_ray
from vlmtool.core.job import Job, log
from vlmtool.core.options import (DECODE, DEVICE, MAX_IMAGE_BYTES, MAX_PIXELS, MAX_TEXT_BYTES, PRECISION, PROGRESS, STRICT,
                                  WORKERS, option)
from vlmtool.core.records import ReadOptions
from vlmtool.core.records import Reject, tar_records
from vlmtool.core.shards import JobDir, ShardRef, ShardTarWriter, atomic_path, atomic_write, dumps, expand_inputs, shard_refs, write_json
from vlmtool.errors import JobFailed, UsageError

HIST_BINS = 200  # fixed bins over [-1, 1]: per-shard histograms add up exactly


class ScoreSink:
    """One shard's score rows. The model runs here, per shard (`score(batch, backoff)`), so that an
    out-of-memory error halves that shard's batch (core/oom.py) and a JPEG the device decoder
    finds unreadable becomes a reject in its place; the sink counts every outcome itself."""

    def __init__(self, job: JobDir, ref: ShardRef, dim: int, score=None, batch_size: int = 256):
        import numpy as np

        from vlmtool.core.oom import Backoff

        self.path = job.out / "_scores" / f"{ref.name}.jsonl"
        self.ref, self.score = ref, score
        self.backoff = Backoff(batch_size, f"filter:{ref.name}")
        self.rows: list[bytes] = []
        self.hist = np.zeros(HIST_BINS, dtype=np.int64)
        self.img_sum = np.zeros(dim, dtype=np.float64)
        self.txt_sum = np.zeros(dim, dtype=np.float64)
        self.scored = 0
        self.rejected: Counter = Counter()
        self.reject_rows: list[dict] = []

    def add(self, batch: Batch, results) -> None:
        """`results`: the batch's collated data (scored here), or (scores, image sums, text sums)."""
        import numpy as np

        scores = None
        if results is not None and self.score is not None:
            batch, results = self.score(batch, self.backoff)
        if results is not None:
            scores, img_sums, txt_sums = results
            for img_sum, txt_sum in zip(img_sums, txt_sums):  # per chunk, in order: the same sums whatever the backoff
                self.img_sum += img_sum
                self.txt_sum += txt_sum
            self.scored += len(scores)
            idx = np.clip(((scores + 1) / 2 * HIST_BINS).astype(int), 0, HIST_BINS - 1)
            np.add.at(self.hist, idx, 1)
        for kind, i in batch.order:
            if kind == "ok":
                self.rows.append(dumps({"key": batch.keys[i], "shard": self.ref.name, "score": float(scores[i]), "reason": None}))
            else:
                r = batch.rejects[i]
                self.rows.append(dumps({"key": r.key, "shard": self.ref.name, "score": None, "reason": r.reason}))
                self.rejected[r.reason] += 1
                self.reject_rows.append(r.row())

    def commit(self) -> dict:
        atomic_write(self.path, b"".join(r + b"\n" for r in self.rows))
        return {"ok": self.scored, "rejected": dict(self.rejected), "rejects": self.reject_rows, "scored": self.scored,
                "hist": self.hist.tolist(), "img_sum": self.img_sum.tolist(), "txt_sum": self.txt_sum.tolist(),
                "oom_backoffs": self.backoff.count}

    def abort(self) -> None:
        pass


def _scorer(loaded, device, dtype, decode: str = "cpu"):
    """score(batch, backoff) -> (the batch, less the samples the device decoder rejected,
    (scores, [sum of image embeddings per chunk], [sum of text embeddings per chunk]))."""
    import numpy as np
    import torch

    from vlmtool.clip.preprocess import to_model_input
    from vlmtool.core.device_decode import drop_rejected, model_input
    from vlmtool.core.runtime import autocast

    model, pp = loaded.model, loaded.preprocess

    def compute(px, tokens):
        with torch.inference_mode(), autocast(device, dtype):
            x = to_model_input(px, pp, device)
            fi = model.encode_image(x, normalize=True).float()
            ft = model.encode_text(tokens.to(device, non_blocking=True), normalize=True).float()
            s = (fi * ft).sum(-1)
        return s.cpu().numpy(), fi.sum(0).double().cpu().numpy(), ft.sum(0).double().cpu().numpy()

    def score(batch, backoff):
        px, tokens = batch.data
        if decode == "device":
            with torch.inference_mode():
                px, bad = model_input(px, pp, device)  # [B', 3, S, S] normalized, on the device
            keep = [i for i in range(len(batch)) if i not in bad]
            batch = drop_rejected(batch, bad, (px, tokens[keep]))
            if not len(batch):
                return batch, None
            tokens = batch.data[1]
        parts = backoff.chunks(len(batch), lambda a, b: compute(px[a:b], tokens[a:b]))
        return batch, (np.concatenate([p[0] for p in parts]), [p[1] for p in parts], [p[2] for p in parts])

    return score


def _read_rows(job: JobDir, ref: ShardRef) -> list[dict]:
    return [orjson.loads(line) for line in (job.out / "_scores" / f"{ref.name}.jsonl").read_bytes().splitlines()]


def _shard_scores(job: JobDir, ref: ShardRef):
    """(scores, row positions) of one shard's valid samples, as compact arrays."""
    import numpy as np

    rows = _read_rows(job, ref)
    pos = np.fromiter((i for i, row in enumerate(rows) if row["score"] is not None), dtype=np.int64)
    return np.fromiter((rows[i]["score"] for i in pos), dtype=np.float64, count=len(pos)), pos


def select_keep(job: JobDir, min_score: float | None, keep_fraction: float | None,
                shards: list[ShardRef] | None = None) -> tuple[float | None, dict, int]:
    """Which rows of which shard are kept: by threshold, or the global top fraction of valid
    samples (ties broken by shard order, then position). Returns (threshold, kept row positions
    by shard name (sorted int arrays), number of valid samples among the shards read). A threshold needs only the `shards`
    a rank selects; a global fraction reads every shard's scores, held as arrays (16 bytes a
    sample), never as rows."""
    import numpy as np

    read = shards if shards is not None and min_score is not None else job.shards
    if min_score is not None:  # one shard at a time
        kept, n = {}, 0
        for ref in read:
            s, pos = _shard_scores(job, ref)
            kept[ref.name], n = pos[s >= min_score], n + len(s)
        return min_score, kept, n
    parts = [_shard_scores(job, ref) for ref in read]
    s = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0)
    row_idx = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
    shard_idx = np.concatenate([np.full(len(p[0]), ref.index, dtype=np.int64) for ref, p in zip(read, parts)]) if parts else row_idx
    del parts
    n = len(s)
    k = int(round(keep_fraction * n))
    order = np.lexsort((row_idx, shard_idx, -s))  # score desc, then shard, then position
    sel = order[:k]
    threshold = float(s[order[k - 1]]) if k else None
    sel = sel[np.lexsort((row_idx[sel], shard_idx[sel]))]  # by shard, then position
    bounds = np.searchsorted(shard_idx[sel], [r.index for r in job.shards] + [1 << 62])
    kept = {r.name: row_idx[sel[bounds[i]:bounds[i + 1]]] for i, r in enumerate(job.shards)}
    return threshold, kept, n


def _records_by_range(path: str, rows: list[dict]):
    """The byte range of each record of a local plain tar, matched to the score rows; None when
    the fast path does not apply (remote input, pax headers, a broken tar, other grouping)."""
    import os

    from webdataset.tariterators import base_plus_ext

    from vlmtool.core.tarscan import Fallback, open_map, scan

    if not os.path.isfile(path):
        return None
    try:
        mm = open_map(path)
        members = scan(mm)
    except (Fallback, OSError):
        return None
    ranges: list[tuple[str, int, int]] = []
    for m in members:
        prefix, _ = base_plus_ext(m.name)
        if prefix is None or m.name.rsplit("/", 1)[-1].startswith("__"):  # names webdataset skips or groups apart
            mm.close()
            return None
        if ranges and ranges[-1][0] == prefix:
            ranges[-1] = (prefix, ranges[-1][1], m.end)
        else:
            ranges.append((prefix, m.header, m.end))
    if [r[0] for r in ranges] != [row["key"] for row in rows]:
        mm.close()
        return None
    return mm, ranges


def _select_shard(job: JobDir, ref: ShardRef, kept_rows, threshold: float | None) -> dict:
    """Copy the kept records of one input shard (`kept_rows`: their positions), original bytes,
    to shards/NAME.tar, and write its final rows (score, kept, reason)."""
    kept_rows = {int(i) for i in kept_rows}
    rows = _read_rows(job, ref)
    final = job.out / "shards" / f"{ref.name}.tar"
    fast = _records_by_range(ref.url, rows)
    if fast is not None:  # whole records copied block for block: their headers and bytes as they were
        mm, ranges = fast
        try:
            with atomic_path(final) as tmp, open(tmp, "wb") as f:
                for i, (_, start, end) in enumerate(ranges):
                    if i in kept_rows:
                        f.write(mm[start:end])
                f.write(bytes(1024))  # end of archive: two zero blocks
        finally:
            mm.close()
        copy = "blocks"
    else:  # remote or unusual tars: read records with webdataset, write them with its TarWriter
        writer = ShardTarWriter(final)
        try:
            for i, rec in enumerate(tar_records(ref)):
                if i >= len(rows) or (not isinstance(rec, Reject) and rec.get("__key__") != rows[i]["key"]):
                    raise UsageError(f"{ref.url} changed since it was scored: rerun in a new --out folder")
                if i in kept_rows and not isinstance(rec, Reject):
                    writer.write({k: v for k, v in rec.items() if not k.startswith("__")} | {"__key__": rec["__key__"]})
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        copy = "records"
    out_rows = [dumps({"key": row["key"], "shard": row["shard"], "score": row["score"], "kept": i in kept_rows,
                       "reason": row["reason"] if row["score"] is None else (None if i in kept_rows else "below_threshold")})
                for i, row in enumerate(rows)]
    atomic_write(job.out / "_rows" / f"{ref.name}.jsonl", b"".join(r + b"\n" for r in out_rows))
    return {"kept": len(kept_rows), "rows": len(rows), "copy": copy}


def _report(job: JobDir, score_records: dict, select_records: dict, threshold, loaded_desc: dict, plot: bool) -> dict:
    import numpy as np

    hist = np.zeros(HIST_BINS, dtype=np.int64)
    img = txt = None
    scored = 0
    for rec in score_records.values():
        hist += np.asarray(rec["hist"])
        scored += rec["scored"]
        img = np.asarray(rec["img_sum"]) if img is None else img + np.asarray(rec["img_sum"])
        txt = np.asarray(rec["txt_sum"]) if txt is None else txt + np.asarray(rec["txt_sum"])
    kept = sum(r["kept"] for r in select_records.values())
    gap = float(np.linalg.norm(img / scored - txt / scored)) if scored else None
    nz = np.nonzero(hist)[0]
    edges = np.linspace(-1, 1, HIST_BINS + 1)
    histogram = [{"from": round(float(edges[i]), 3), "to": round(float(edges[i + 1]), 3), "count": int(hist[i])}
                 for i in range(nz.min(), nz.max() + 1)] if len(nz) else []
    report = {"scored": scored, "kept": kept, "kept_fraction": round(kept / scored, 6) if scored else None,
              "threshold": threshold, "modality_gap": round(gap, 6) if gap is not None else None,
              "histogram": histogram, **loaded_desc}
    if plot and histogram:
        report["chart_legend"] = _plot(job.out / "report.png", histogram, threshold, report["modality_gap"], kept, scored - kept)
    write_json(job.out / "report.json", report)
    atomic_write(job.out / "report.txt", text_histogram(histogram, threshold).encode())
    return report


def text_histogram(histogram: list[dict], threshold, rows: int = 20, width: int = 50) -> str:
    """The score histogram as text: `rows` bins over the scores' range, bars scaled to `width`."""
    if not histogram:
        return "no scores\n"
    lo, hi = histogram[0]["from"], histogram[-1]["to"]
    step = (hi - lo) / rows
    counts = [0] * rows
    for b in histogram:
        counts[min(rows - 1, int((b["from"] - lo) / step + 1e-9))] += b["count"]
    top = max(counts) or 1
    lines = []
    for i, c in enumerate(counts):
        a, b = lo + i * step, lo + (i + 1) * step
        mark = " <- threshold" if threshold is not None and a <= threshold < b else ""
        lines.append(f"{a:7.3f} .. {b:7.3f} | {'#' * round(c / top * width):<{width}} {c}{mark}")
    return "\n".join(lines) + "\n"


def _plot(path: Path, histogram: list[dict], threshold, gap: float | None, n_kept: int, n_dropped: int) -> list[str]:
    """The score histogram, kept and dropped shaded apart, the threshold and the modality gap
    marked; the legend counts are the job's own (a bin that straddles the threshold holds both
    kind, so counting bars would miscount). Returns the legend's labels."""
    from vlmtool.core.plots import figure, save

    fig, ax = figure()
    lefts = [b["from"] for b in histogram]
    widths = [b["to"] - b["from"] for b in histogram]
    counts = [b["count"] for b in histogram]
    kept = [threshold is None or b["to"] > threshold for b in histogram]  # the straddling bin drawn with the kept side
    ax.bar([x for x, k in zip(lefts, kept) if k], [c for c, k in zip(counts, kept) if k], [w for w, k in zip(widths, kept) if k],
           align="edge", color="#3b6fc4", label=f"kept ({n_kept})")
    ax.bar([x for x, k in zip(lefts, kept) if not k], [c for c, k in zip(counts, kept) if not k],
           [w for w, k in zip(widths, kept) if not k], align="edge", color="#b8b8b8", label=f"dropped ({n_dropped})")
    if threshold is not None:
        ax.axvline(threshold, color="#d62728", linewidth=1.5, label=f"threshold {threshold:.4f}")
    ax.set_xlabel("CLIP score (cosine similarity of image and caption embeddings)")
    ax.set_ylabel("samples")
    title = "filter: score histogram"
    if gap is not None:
        title += f"  (modality gap |mean image - mean text| = {gap:.3f})"
    ax.set_title(title)
    legend = ax.legend(loc="best")
    save(fig, path)
    return [t.get_text() for t in legend.get_texts()]


@dataclass(frozen=True)
class FilterOptions(ExecutorOptions):
    """`vlmtool filter`'s options (see its --help). Every field but the free ones must match on resume."""

    pretrained: str = option(MISSING, "A clip-train folder, a checkpoint file, or an open_clip pretrained tag (e.g. openai, with "
                             "--model); 'random' for random weights (speed tests only).")
    model: str | None = option(None, "open_clip architecture, e.g. ViT-B-32 (not needed with a clip-train folder).")
    min_score: float | None = option(None, "Keep pairs with cosine similarity >= X (LAION used 0.28 with ViT-B/32).")
    keep_fraction: float | None = option(None, "Keep the global top fraction F of valid pairs, over all shards and ranks.")
    preprocess: str = option("fast", "fast (JPEG draft decode, one resize, uint8 normalized on the device) or exact "
                             "(open_clip's transform).")
    decode: str = DECODE()
    precision: str = PRECISION()
    min_side: int = option(0, "Pre-filter: reject images whose shorter side is below this.", min=0)
    max_aspect: float = option(0.0, "Pre-filter: reject images more elongated than this ratio (0: off).", min=0.0)
    min_words: int = option(0, "Pre-filter: reject captions with fewer words.", min=0)
    min_chars: int = option(0, "Pre-filter: reject captions with fewer characters.", min=0)
    max_pixels: int = MAX_PIXELS()
    max_image_bytes: int = MAX_IMAGE_BYTES()
    max_text_bytes: int = MAX_TEXT_BYTES()
    batch_size: int = option(256, "Samples per model batch.", flags=("--batch-size", "-b"), min=1, free=True)
    workers: int = WORKERS(2)
    device: str = DEVICE()
    strict: bool = STRICT()
    plot: bool = option(False, "Also draw the score histogram to OUT/report.png (needs matplotlib).", free=True)
    wait_timeout: float | None = option(None, "Seconds to wait for other ranks' scores before giving up.", free=True)
    progress: bool = PROGRESS()

    def __post_init__(self):
        if (self.min_score is None) == (self.keep_fraction is None):
            raise UsageError("give exactly one of --min-score X or --keep-fraction F")
        if self.min_score is not None and not -1.0 <= self.min_score <= 1.0:  # also refuses nan
            raise UsageError(f"--min-score {self.min_score}: a cosine similarity is a number in [-1, 1]")
        if self.keep_fraction is not None and not 0 < self.keep_fraction <= 1:
            raise UsageError("--keep-fraction must be in (0, 1]")
        if self.preprocess not in ("fast", "exact"):
            raise UsageError("--preprocess is fast or exact")
        from vlmtool.core.device_decode import check_decode

        check_decode(self.decode)

    def read(self) -> ReadOptions:
        return ReadOptions.of(self)


def run_filter(inputs: list[str], out: str, opts: FilterOptions) -> dict:
    """Score, then select (see the module docstring); the summary of this rank's part, or of
    the whole job from the rank that finishes last."""
    from vlmtool.core.runtime import dist_info, precision_name, resolve_device, resolve_precision

    t0 = time.perf_counter()
    ray = uses_ray(opts)
    dist = dist_info()
    refs = shard_refs(expand_inputs(inputs))
    dev = resolve_device(opts.device, dist)
    dtype = resolve_precision(opts.precision, dev)
    with Job("filter", out, opts, refs, dist) as job:
        scoring, selecting = job.records("score"), job.records("select")
        run, desc = None, None
        if ray:  # the driver: both passes on Ray actors, the threshold computed here between them
            run, desc, threshold = _ray_passes(job, scoring, selecting, opts)
        else:
            if scoring.pending():
                run, desc = _score(job, scoring, opts, dev, dtype)
            if not scoring.all_done():
                log("filter", f"rank {dist.rank}: waiting for the other ranks' scores")
            scoring.wait_all(timeout=opts.wait_timeout)
            threshold = _select_here(scoring, selecting, opts)
        this_run = {"scored": run.ok if run else 0, "seconds": round(time.perf_counter() - t0, 3),
                    "samples_per_s": round(run.samples / run.seconds, 1) if run and run.seconds else None}
        if not selecting.all_done():
            return {**job.incomplete(selecting, this_run, "the last one writes scores.jsonl and the report"), "threshold": threshold}
        return _finish(job, scoring, selecting, threshold, desc or _model_desc(job) or {"precision": precision_name(dtype)},
                       this_run)


def _finish(job: Job, scoring: JobDir, selecting: JobDir, threshold, desc: dict, this_run: dict) -> dict:
    """Once every shard is selected: one scores.jsonl in input order, the report, the manifest."""
    with atomic_path(job.out / "scores.jsonl") as tmp, open(tmp, "wb") as f:  # streamed: one shard's rows at a time
        for ref in job.refs:
            with open(job.out / "_rows" / f"{ref.name}.jsonl", "rb") as part:
                shutil.copyfileobj(part, f, 1 << 20)
    score_records = scoring.records()
    report = _report(job, score_records, selecting.records(), threshold, desc, job.opts.plot)
    totals = merge_totals(score_records)
    job.write_manifest(scoring, totals, {"report": {k: v for k, v in report.items() if k != "histogram"},
                                         "select": selecting.records()})
    totals["oom_backoffs"] = sum(r.get("oom_backoffs", 0) for r in score_records.values())
    return {**job.header(), "complete": True, "threshold": threshold, **totals, "kept": report["kept"],
            "kept_fraction": report["kept_fraction"], "modality_gap": report["modality_gap"], **desc, "this_run": this_run}


def _select_here(scoring: JobDir, selecting: JobDir, opts: FilterOptions):
    """The select pass over this rank's unselected shards, once every shard is scored; the threshold."""
    todo = selecting.pending()
    threshold, kept, _ = select_keep(scoring, opts.min_score, opts.keep_fraction, todo)
    for ref in todo:
        selecting.write_record(ref, _select_shard(selecting, ref, kept[ref.name], threshold))
    return threshold


def _score(job: Job, scoring: JobDir, opts: FilterOptions, dev, dtype):
    """The score pass over this rank's unscored shards; returns its RunStats and the model's description."""
    desc, scorer = _score_parts(opts, dev, dtype)
    run = _score_shards(scoring, opts, scorer, dev, opts.progress)
    write_json(job.state_path(f"model-{job.dist.rank}.json"), desc)
    return run, desc


def _score_parts(opts: FilterOptions, dev, dtype) -> tuple[dict, tuple]:
    """The model loaded once: its description, and (embedding width, loader preparer, compute)."""
    from vlmtool.clip.model import load_clip
    from vlmtool.clip.preprocess import ClipPrep, PreFilter
    from vlmtool.core.runtime import precision_name

    loaded = load_clip(opts.model, opts.pretrained, device=dev)
    desc = {**loaded.describe(), "precision": precision_name(dtype), "preprocess_mode": opts.preprocess, "decode": opts.decode}
    dim = int(loaded.model.text_projection.shape[1]) if getattr(loaded.model, "text_projection", None) is not None else None
    prep = ClipPrep(loaded.preprocess, loaded.tokenizer, opts.preprocess, loaded.transform,
                    PreFilter(opts.min_side, opts.max_aspect, opts.min_words, opts.min_chars), decode=opts.decode)
    if dim is None:  # towers without a projection matrix: ask the model
        import torch

        with torch.inference_mode():
            dim = int(loaded.model.encode_text(loaded.tokenizer(["a"]).to(dev)).shape[-1])
    return desc, (dim, prep, _scorer(loaded, dev, dtype, opts.decode))


def _score_shards(scoring: JobDir, opts: FilterOptions, scorer: tuple, dev, progress: bool):
    """The score pass over `scoring`'s pending shards: the model runs in each shard's sink, so an
    out-of-memory error halves that shard's batch and a device-decoder reject stays in its place."""
    dim, prep, score = scorer
    return run_shards(scoring, prep, lambda ref: ScoreSink(scoring, ref, dim, score, opts.batch_size), None,
                      batch_size=opts.batch_size, workers=opts.workers, strict=opts.strict, read=opts.read(), progress=progress,
                      pin_memory=dev.type == "cuda", desc="filter: score")


def _ray_passes(job: Job, scoring: JobDir, selecting: JobDir, opts: FilterOptions):
    """Both passes on Ray actors (core/executors.py): score on the model's actors, then the
    threshold here, from every shard's scores, then select on CPU actors. (run, desc, threshold)"""
    out = str(job.out)
    run, desc = run_records(opts, scoring, ScoreWorker(out, opts), "filter: score", progress=opts.progress)
    if desc:
        write_json(job.state_path("model-0.json"), desc)
    if not scoring.all_done():  # pragma: no cover - the pool returns only when every shard is committed
        raise JobFailed("filter: shards left unscored; rerun with the same --out")
    todo = selecting.pending()
    threshold, kept, _ = select_keep(scoring, opts.min_score, opts.keep_fraction, todo)
    run_records(opts, selecting, SelectWorker(out), "filter: select", args={r.name: (kept[r.name], threshold) for r in todo},
                gpus=0, progress=False)
    return run, desc or None, threshold


class ScoreWorker:
    """The score pass for one shard at a time, in a Ray actor: the model loaded once (setup)."""

    def __init__(self, out: str, opts: FilterOptions):
        self.out, self.opts = out, opts

    def setup(self) -> dict:
        from vlmtool.core.runtime import resolve_device, resolve_precision

        self.dev = resolve_device(self.opts.device)
        desc, self.scorer = _score_parts(self.opts, self.dev, resolve_precision(self.opts.precision, self.dev))
        return desc

    def run(self, ref: ShardRef, arg=None) -> dict:
        scoring = shard_records(self.out, "filter", ref, "score")
        _score_shards(scoring, self.opts, self.scorer, self.dev, progress=False)
        return record_stats(scoring, ref)


class SelectWorker:
    """The select pass for one shard: its kept rows and the threshold come from the driver."""

    def __init__(self, out: str):
        self.out = out

    def setup(self) -> dict:
        return {}

    def run(self, ref: ShardRef, arg) -> dict:
        kept_rows, threshold = arg
        selecting = shard_records(self.out, "filter", ref, "select")
        if not selecting.is_done(ref):
            selecting.write_record(ref, _select_shard(selecting, ref, kept_rows, threshold))
        rec = selecting.records()[ref.name]
        return {"samples": rec["rows"], "ok": rec["kept"]}


def _model_desc(job: Job) -> dict:
    for p in sorted((job.out / "_state").glob("model-*.json")):
        return orjson.loads(p.read_bytes())
    return {}
