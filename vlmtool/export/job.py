"""`vlmtool export`: instruction rows joined to their images, written in a trainer's layout.

    split   instructions.jsonl -> _state/rows.sqlite: every row checked, each id once, filed
            under its input shard (one pass; see rows.py)
    shards  for each input shard: its rows (one shard's worth in memory), one read of its tar
            (tar_records: caps, broken tars as rejects), each row joined by key to its image,
            the image checked (decoded at draft scale), the format's unit written and committed,
            then the shard's completion record
    finish  once every shard is done: what spans shards (llava.json, dataset_info.json), the
            manifest and rejects.jsonl (the split's rejects, then each shard's)

Rows that cannot be exported are counted by reason, never a crash: `bad_row`,
`unknown_shard`, `duplicate_id` (the split), `missing_image` (no record of that key, or one
with no image member), the image's own (`corrupt_image`, `truncated_image`, `image_too_large`),
the record's (`member_too_large`, `duplicate_key`, `broken_tar`). A job that wrote no row at all
exits 1 after its manifest.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from vlmtool.core.executors import ExecutorOptions, record_stats, run_records, shard_records, uses_ray
from vlmtool.core.job import Job, log
from vlmtool.core.options import MAX_IMAGE_BYTES, MAX_PIXELS, MAX_TEXT_BYTES, PROGRESS, option
from vlmtool.core.records import ReadOptions, Reject, tar_records
from vlmtool.core.samples import IMAGE_EXTS, SampleError, decode_image
from vlmtool.core.shards import ShardRef, atomic_path, dumps, expand_inputs, read_json, shard_refs, write_json
from vlmtool.errors import JobFailed, UsageError
from vlmtool.export.data import FORMATS, parse_size
from vlmtool.export.rows import Row, RowIndex, build_index, safe_name

MAX_LOGGED_REJECTS = 10_000  # per shard, in its completion record (the counts are always whole)


@dataclass(frozen=True)
class ExportOptions(ExecutorOptions):
    """`vlmtool export`'s options (see its --help)."""

    to: str = option("llava", "llava (JSON list + image folder), hf (datasets Parquet), sharegpt (LLaMA-Factory) or wds "
                     "(webdataset shards).", flags=("--to", "-t"))  # the command requires it
    instructions: str = ""  # the command's argument, resolved by run_export
    max_shard_size: str = option("500MB", "hf: start a new Parquet file past this size (like datasets': 500MB, 1GB, 64MiB).")
    name: str = option("vlmtool", "sharegpt: the dataset's name in dataset_info.json.")
    max_pixels: int = MAX_PIXELS()
    max_image_bytes: int = MAX_IMAGE_BYTES()
    max_text_bytes: int = MAX_TEXT_BYTES()
    progress: bool = PROGRESS()

    def check(self) -> None:
        if self.to not in FORMATS:
            raise UsageError(f"--to {self.to!r}: choose one of {', '.join(FORMATS)}")
        needs = FORMATS[self.to].needs
        if needs:
            try:
                __import__(needs)
            except ImportError:
                raise UsageError(f"--to {self.to} writes Parquet and needs {needs}: pip install 'vlmtool[export]'") from None
        try:
            parse_size(self.max_shard_size)
        except ValueError as e:
            raise UsageError(f"--max-shard-size: {e}") from None
        if not Path(self.instructions).is_file():
            raise UsageError(f"instructions file {self.instructions!r} does not exist")

    def read(self) -> ReadOptions:
        return ReadOptions.of(self)


def run_export(instructions: str, shards: list[str], out: str, opts: ExportOptions = ExportOptions()) -> dict:
    """Export `instructions` joined to the images in `shards` into the job folder `out`; the
    summary. Raises UsageError before anything is written for options that cannot work, and
    JobFailed (after the manifest) when no row could be written."""
    import dataclasses

    opts = dataclasses.replace(opts, instructions=str(Path(instructions).resolve()))
    opts.check()
    ray = uses_ray(opts)
    refs = shard_refs(expand_inputs(shards))
    with Job("export", out, opts, refs) as job:
        _check_instructions_unchanged(job, Path(opts.instructions))
        split = build_index(Path(opts.instructions), refs, job.out / "_state")
        summary = _export(job, opts, split, ray)
    if summary.get("complete") and not summary["rows"]:
        err = JobFailed(f"export: no row written ({_reasons(summary['rejected'])}); rejects.jsonl in {out} lists each")
        err.summary = summary
        raise err
    return summary


def _reasons(counts: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:4]) or "no instruction rows"


def _check_instructions_unchanged(job: Job, path: Path) -> None:
    """The rows were split once; a rerun over a changed file would mix two files' rows."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    mine = {"sha256": h.hexdigest(), "bytes": path.stat().st_size}
    state = job.state_path("instructions.json")
    theirs = read_json(state) if state.exists() else None
    if theirs is not None and theirs != mine:
        if (job.out / "_state" / "split.json").exists():
            raise UsageError(f"{path} changed since {job.out} was started: use a new --out folder, or delete this one")
    if theirs != mine:
        write_json(state, mine)


def _export(job: Job, opts: ExportOptions, split: dict, ray: bool = False) -> dict:
    t0 = time.perf_counter()
    records = job.records()
    pending = records.pending()
    if ray:
        run, _ = run_records(opts, records, ExportWorker(str(job.out), opts), "export", progress=opts.progress)
        this_run = {"shards": len(pending), "rows": run.ok, "seconds": round(time.perf_counter() - t0, 3)}
        if not records.all_done():  # pragma: no cover - the pool returns only when every shard is committed
            return job.incomplete(records, this_run)
        return {**job.header(), "complete": True, **_finish(job, records, opts, split), "this_run": this_run}
    index = RowIndex(job.out / "_state" / "rows.sqlite")
    bar = _bar(opts, len(pending))
    written = 0
    try:
        for ref in pending:
            rec = export_shard(job.out, ref, index.rows(ref.index), opts)
            records.write_record(ref, rec)
            written += rec["ok"]
            if bar is not None:
                bar.update(1)
                bar.set_postfix(rows=written)
    finally:
        index.close()
        if bar is not None:
            bar.close()
    this_run = {"shards": len(pending), "rows": written, "seconds": round(time.perf_counter() - t0, 3)}
    if not records.all_done():
        return job.incomplete(records, this_run)
    return {**job.header(), "complete": True, **_finish(job, records, opts, split), "this_run": this_run}


class ExportWorker:
    """Export for one shard at a time, in a Ray actor (core/executors.py); the rows come from
    the split the driver made (read-only)."""

    def __init__(self, out: str, opts: ExportOptions):
        self.out, self.opts = out, opts

    def setup(self) -> dict:
        self.index = RowIndex(Path(self.out) / "_state" / "rows.sqlite")
        return {}

    def run(self, ref: ShardRef, arg=None) -> dict:
        records = shard_records(self.out, "export", ref)
        if not records.is_done(ref):
            records.write_record(ref, export_shard(Path(self.out), ref, self.index.rows(ref.index), self.opts))
        return record_stats(records, ref)


def _bar(opts: ExportOptions, total: int):
    if not opts.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="export", unit="shard", dynamic_ncols=True)


class _Shard:
    """The counts and rejects of one shard's export."""

    def __init__(self, ref: ShardRef):
        self.ref, self.rejected, self.rejects, self.ok, self.images = ref, Counter(), [], 0, 0

    def reject(self, rows: list[Row], reason: str, detail: str) -> None:
        self.rejected[reason] += len(rows)
        for r in rows[: max(0, MAX_LOGGED_REJECTS - len(self.rejects))]:
            self.rejects.append({"shard": self.ref.name, "key": r.key, "id": r.id, "reason": reason, "detail": detail})


def export_shard(out: Path, ref: ShardRef, rows: dict[str, list[Row]], opts: ExportOptions) -> dict:
    """Join one shard's rows to its records, write the format's unit; the completion record."""
    t0 = time.perf_counter()
    n_rows = sum(len(v) for v in rows.values())
    st = _Shard(ref)
    writer = FORMATS[opts.to](out, safe_name(ref.name), opts)
    names: set[str] = set()
    broke = None
    try:
        for rec in tar_records(ref, opts.read()):
            if isinstance(rec, Reject):
                broke = broke or (rec if rec.reason == "broken_tar" else None)
                if rec.key in rows:
                    st.reject(rows.pop(rec.key), rec.reason, rec.detail)
                continue
            mine = rows.pop(rec["__key__"], None)
            if mine:
                _join(writer, st, rec, mine, names, opts)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    for key, left in rows.items():  # rows whose key the shard never gave
        if broke is not None:
            st.reject(left, "broken_tar", f"the shard broke before record {key!r}: {broke.detail}")
        else:
            st.reject(left, "missing_image", f"no record {key!r} in the shard")
    return {"samples": n_rows, "ok": st.ok, "images": st.images, "rejected": dict(sorted(st.rejected.items())),
            "rejects": st.rejects, "seconds": round(time.perf_counter() - t0, 3)}


def _join(writer, st: _Shard, rec: dict, rows: list[Row], names: set[str], opts: ExportOptions) -> None:
    """One record's rows: its image found and checked, then each row written."""
    key = rec["__key__"]
    ext = next((r.ext for r in rows if r.ext in rec), None) or next((e for e in IMAGE_EXTS if e in rec), None)
    if ext is None:
        st.reject(rows, "missing_image", f"record {key!r} has no image member")
        return
    try:
        decode_image(rec[ext], draft=(1, 1), max_pixels=opts.max_pixels)  # every coded byte read: truncation shows
    except SampleError as e:
        st.reject(rows, e.reason, e.detail)
        return
    name = safe_name(key)
    if name in names:  # two keys that differ only in characters a file name cannot hold
        st.reject(rows, "duplicate_key", f"key {key!r} maps to the file name {name!r} of an earlier key")
        return
    names.add(name)
    for i, row in enumerate(rows):
        writer.add(row, name, "jpg" if ext == "jpeg" else ext, rec[ext], first=i == 0)
    st.ok += len(rows)
    st.images += 1


def _finish(job: Job, records, opts: ExportOptions, split: dict) -> dict:
    """What spans shards, the manifest, and rejects.jsonl streamed (split's, then each shard's)."""
    from vlmtool.core.batches import merge_totals

    recs = records.records()
    entry = FORMATS[opts.to].finalize(job.out, [safe_name(r.name) for r in job.refs], opts)
    shard_totals = merge_totals(recs)
    rejected = Counter(split["rejected"])
    rejected.update(shard_totals["rejected"])
    totals = {"format": opts.to, "instructions": split["lines"], "rows": shard_totals["ok"],
              "images": sum(r.get("images", 0) for r in recs.values()), "rejected": dict(sorted(rejected.items())),
              "shards": len(recs), **entry}
    job.write_manifest(records, totals)
    with atomic_path(job.out / "rejects.jsonl") as tmp, open(tmp, "wb") as f:
        with open(job.out / "_state" / "split-rejects.jsonl", "rb") as src:
            for line in src:
                f.write(line)
        for rec in recs.values():
            for r in rec.get("rejects", []):
                f.write(dumps(r) + b"\n")
    if rejected:
        log("export", f"{sum(rejected.values())} of {split['lines']} rows not exported: {_reasons(rejected)}")
    return totals


__all__ = ["ExportOptions", "run_export", "FORMATS"]
