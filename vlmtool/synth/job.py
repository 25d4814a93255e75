"""`vlmtool synth`: visual instruction data from a teacher, every request's result kept once.

Each request is keyed by a hash of (sample, task, prompt, teacher, model). Results (answers
that passed validation, rejections with their reason, requests that failed every retry) are
appended to `log/requests-RANK.jsonl` and flushed as they arrive; a rerun reads every log,
skips what is done and sends only what is missing (`--retry-failed` sends the failed ones
again). Shards are split across ranks; the rank that finds every shard done writes
`instructions.jsonl` (LLaVA JSON lines, or chat messages with `--format messages`) in input
order, and the manifest with requests, retries, failures and rejections by reason, and tokens.

What a sample holds is read from the data: its objects (`--objects-field`) ground the
captions teacher, the hallucination check and the negative questions, whose absent objects
come from the labels counted over the inputs (popularity, co-occurrence) or a `--vocabulary`
file. A sample that names no objects gets no negative question unless a vocabulary is given.

A job in which every request failed, or more than `--max-failed` of them, raises JobFailed
(exit 1) after its outputs and manifest are written.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections import Counter, OrderedDict
from pathlib import Path

import orjson

from vlmtool.core.job import Job
from vlmtool.core.shards import (
    JobDir,
    atomic_path,
    dumps,
    expand_inputs,
    read_json,
    shard_refs,
    write_json,
)
from vlmtool.errors import JobFailed, UsageError
from vlmtool.synth.objects import ObjectTables, count_objects, read_vocabulary
from vlmtool.synth.options import FORMATS, SynthOptions
from vlmtool.synth.run import Plan, Run, Seen
from vlmtool.synth.tasks import TASKS, load_prompts, parse_tasks
from vlmtool.synth.teachers import CaptionsTeacher, LocalTeacher, OpenAITeacher

__all__ = ["FORMATS", "SynthOptions", "run_synth"]
_STATUS_RANK = {"ok": 3, "rejected": 2, "failed": 1}


def _log_rows(log_dir: Path):
    """(line, row) for every terminal row of every rank's log, streamed line by line; a torn
    last line is skipped."""
    for p in sorted(log_dir.glob("requests-*.jsonl")):
        with open(p, "rb") as f:
            for line in f:
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(row, dict) and row.get("status") in _STATUS_RANK and isinstance(row.get("id"), str):
                    yield line, row


def _better(row: dict, old: dict | str | None) -> bool:
    """Whether `row` replaces `old` as a request's result: ok beats rejected beats failed, and
    of two alike the later wins (a request retried after a failure counts once)."""
    if old is None:
        return True
    return _STATUS_RANK[row["status"]] >= _STATUS_RANK[old if isinstance(old, str) else old["status"]]


def _failed_shards(log_dir: Path) -> set[str]:
    """The shards holding a request whose best result is a failure (for --retry-failed): two
    passes over the logs, keeping only the failed requests' ids."""
    failed = {row["id"]: row.get("shard") for _, row in _log_rows(log_dir) if row["status"] == "failed"}
    if failed:
        for _, row in _log_rows(log_dir):
            if row["status"] != "failed":
                failed.pop(row["id"], None)
    return set(failed.values())


def _seen(log_dir: Path, pending: set[str]) -> Seen:
    """What a rerun needs from the logs (see run.Seen), bounded by the pending shards."""
    seen = Seen()
    for _, row in _log_rows(log_dir):
        shard = row.get("shard")
        if row["status"] == "ok":
            seen.add_ok(shard, row.get("key"), row.get("turns", []), in_flight=shard in pending)
        if shard in pending and _better(row, seen.status.get(row["id"])):
            seen.status[row["id"]] = row["status"]
    return seen


def _open_log(path: Path):
    """Append to a log, cutting a line torn by a kill so the next one starts clean."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
    return open(path, "ab")


def make_teacher(opts: SynthOptions):
    if opts.teacher == "captions":
        return CaptionsTeacher(opts.model or "captions-v1")
    if opts.teacher.startswith("local:"):
        from vlmtool.core.runtime import resolve_device

        return LocalTeacher(opts.teacher[len("local:"):], resolve_device(opts.device), max_new_tokens=opts.max_tokens,
                            batch_size=opts.concurrency)
    return OpenAITeacher(opts.base_url, opts.model, api_key=os.environ.get(opts.api_key_env) or None, concurrency=opts.concurrency,
                         timeout=opts.timeout, max_retries=opts.max_retries, backoff=opts.backoff, max_tokens=opts.max_tokens,
                         structured=opts.structured, requests_per_s=opts.requests_per_s, tokens_per_min=opts.tokens_per_min,
                         max_reply_bytes=opts.max_reply_bytes)


def to_record(row: dict, format: str) -> dict:
    turns = row["turns"]
    base = {"id": row["id"], "image": row["image"], "shard": row["shard_url"], "key": row["key"], "task": row["task"],
            "teacher": row["teacher"], "model": row["model"]}
    if format == "messages":
        msgs = []
        for i, t in enumerate(turns):
            user = ([{"type": "image"}] if i == 0 else []) + [{"type": "text", "text": t["question"]}]
            msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": [{"type": "text", "text": t["answer"]}]}]
        return {**base, "messages": msgs}
    conv = []
    for i, t in enumerate(turns):
        conv.append({"from": "human", "value": ("<image>\n" if i == 0 else "") + t["question"]})
        conv.append({"from": "gpt", "value": t["answer"]})
    return {**base, "conversations": conv}


def run_synth(inputs: list[str], out: str, opts: SynthOptions | None = None, **changes) -> dict:
    """Synthesize instruction pairs from the shards `inputs` into the job folder `out`; the
    summary. `changes` (field=value) amend `opts` (default SynthOptions()). Raises UsageError
    for options that cannot work (before anything is written) and JobFailed when too many
    requests failed (after the outputs and manifest are written)."""
    from vlmtool.core.executors import uses_ray
    from vlmtool.core.runtime import dist_info

    opts = dataclasses.replace(opts or SynthOptions(), **changes)
    opts.check()
    ray = uses_ray(opts)
    weights = parse_tasks(opts.tasks)
    prompts = load_prompts(opts.prompts)
    file_vocabulary = read_vocabulary(opts.vocabulary) if opts.vocabulary else None
    refs = shard_refs(expand_inputs(inputs))
    with Job("synth", out, opts, refs, dist_info()) as job:
        _check_files_unchanged(job, prompts, file_vocabulary)
        plan = Plan(opts, prompts, weights, _object_tables(job, opts), file_vocabulary)
        summary = _synth(job, plan, ray)
    failure = failure_message(summary, opts.max_failed)
    if failure:
        err = JobFailed(failure)
        err.summary = summary
        raise err
    return summary


def _check_files_unchanged(job: Job, prompts: dict[str, str], file_vocabulary: list[str] | None) -> None:
    """The job's options name the --prompts and --vocabulary files; their contents must not
    change either once requests were made (new prompts would add requests beside the old)."""
    import hashlib

    path = job.state_path("files.json")
    mine = {"prompts": hashlib.sha256(orjson.dumps(prompts, option=orjson.OPT_SORT_KEYS)).hexdigest(),
            "vocabulary": hashlib.sha256(orjson.dumps(file_vocabulary)).hexdigest()}
    theirs = read_json(path) if path.exists() else None
    started = any(p.stat().st_size for p in (job.out / "log").glob("requests-*.jsonl"))
    if theirs is not None and started:
        changed = [f"--{k}" for k in mine if theirs.get(k) != mine[k]]
        if changed:
            raise UsageError(f"{job.out} was made with other {' and '.join(changed)} file contents: restore them to resume, "
                             "or use a new --out folder")
    if theirs != mine:
        write_json(path, mine)


def _object_tables(job: Job, opts: SynthOptions) -> ObjectTables:
    """The labels counted over every input (the same for every rank), once per job folder."""
    from vlmtool.core.records import ReadOptions

    path = job.state_path("objects.json")
    if path.exists():
        try:
            return ObjectTables.from_json(read_json(path))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            pass  # not ours, or from an older version: count again
    read = ReadOptions.of(opts)
    tables = count_objects(job.refs, read, opts.objects_field, opts.progress)
    write_json(path, tables.to_json())
    return tables


def _synth(jobf: Job, plan: Plan, ray: bool = False) -> dict:
    opts = plan.opts
    t0 = time.perf_counter()
    job = jobf.records()
    log_dir = job.out / "log"
    if opts.retry_failed:  # reopen the shards that hold failed requests; only those requests are sent again
        failed_shards = _failed_shards(log_dir)
        for ref in jobf.refs:
            if ref.name in failed_shards:
                job.record_path(ref).unlink(missing_ok=True)
    pending = job.pending()
    if ray:  # one actor holds the teacher, the limits and the log for the whole cluster (docs/cluster.md)
        from vlmtool.core.executors import run_one

        worker = SynthWorker(str(job.out), jobf.refs, dataclasses.replace(plan, opts=dataclasses.replace(opts, progress=False)))
        res = run_one(opts, job.out, worker, desc="synth", total=len(pending), poll=lambda: sum(job.is_done(r) for r in pending),
                      progress=opts.progress and bool(pending))
        stats, reasons = res["stats"], res["reasons"]
    else:
        stats, reasons = send_requests(job, plan, jobf.dist.rank)
    this_run = {"shards": len(pending), **{k: stats.get(k, 0) for k in ("sent", "ok", "rejected", "failed", "retries",
                                                                       "prompt_tokens", "completion_tokens", "image_tokens")},
                "by_reason": reasons, "seconds": round(time.perf_counter() - t0, 3)}
    this_run.update(speed(this_run))
    if not job.all_done():
        return jobf.incomplete(job, this_run, "the last one writes instructions.jsonl")
    return {**jobf.header(), "complete": True, **finalize(jobf, job, plan), "this_run": this_run}


def send_requests(job: JobDir, plan: Plan, rank: int) -> tuple[dict, dict]:
    """Send the requests of the unfinished shards of `job`, every result logged to
    log/requests-RANK.jsonl as it arrives (what the logs hold already is skipped); (stats, reasons)."""
    teacher = make_teacher(plan.opts)
    pending = job.pending()
    log_dir = job.out / "log"
    log = _open_log(log_dir / f"requests-{rank:05d}.jsonl")
    runner = Run(job, teacher, plan, _seen(log_dir, {r.name for r in pending}), log)

    async def main():
        try:
            await runner.run(pending)
        finally:
            if hasattr(teacher, "aclose"):
                await teacher.aclose()

    try:
        asyncio.run(main())
    finally:
        log.close()
    return dict(runner.stats), dict(runner.reasons)


class SynthWorker:
    """synth in one Ray actor: the teacher with its concurrency and rate limits (the cluster's
    total, not a rate per actor), the exactly-once request log and the shards' records."""

    def __init__(self, out: str, refs: list, plan: Plan):
        self.out, self.refs, self.plan = out, refs, plan

    def setup(self) -> dict:
        return {}

    def run(self, ref=None, arg=None) -> dict:
        from vlmtool.core.runtime import Dist

        stats, reasons = send_requests(JobDir(self.out, "synth", self.refs, Dist()), self.plan, 0)
        return {"stats": stats, "reasons": reasons}


def speed(run: dict) -> dict:
    """Requests and answer tokens a second over this run (any teacher)."""
    secs = max(run["seconds"], 1e-9)
    return {"requests_per_s": round(run["sent"] / secs, 3), "completion_tokens_per_s": round(run["completion_tokens"] / secs, 1)}


class _Spill:
    """Log lines sorted into one file per shard under `folder`, at most `handles` files open at
    once (the least recently written is closed first)."""

    def __init__(self, folder: Path, handles: int = 32):
        import shutil

        shutil.rmtree(folder, ignore_errors=True)  # a killed finalize's leftovers
        folder.mkdir(parents=True)
        self.folder, self.handles = folder, handles
        self.files: OrderedDict = OrderedDict()

    def add(self, name: str, line: bytes) -> None:
        f = self.files.pop(name, None)
        if f is None:
            if len(self.files) >= self.handles:
                self.files.popitem(last=False)[1].close()
            f = open(self.folder / name, "ab")
        self.files[name] = f
        f.write(line if line.endswith(b"\n") else line + b"\n")

    def close(self) -> None:
        while self.files:
            self.files.popitem()[1].close()

    def best(self, name: str) -> dict[str, dict]:
        """The best row per request id among the lines spilled under `name` (first seen first)."""
        best: dict[str, dict] = {}
        p = self.folder / name
        if p.exists():
            with open(p, "rb") as f:
                for line in f:
                    row = orjson.loads(line)
                    if _better(row, best.get(row["id"])):
                        best[row["id"]] = row
        return best


def _write_instructions(jobf: Job, job: JobDir, plan: Plan) -> tuple[Counter, Counter, Counter]:
    """instructions.jsonl in input order (shard, sample, task), one shard's rows in memory at a
    time: the logs are spilled into a file per shard, then each is read, its best row per
    request kept, sorted and written. Returns (totals, instructions by task, results by status:reason)."""
    import shutil

    folder = job.out / f"_spill-r{jobf.dist.rank}"
    spill = _Spill(folder)
    try:
        names = {r.name: f"{r.index:06d}" for r in job.shards}
        for line, row in _log_rows(job.out / "log"):
            spill.add(names.get(row.get("shard"), "other"), line)  # rows of no input shard come last, as before
        spill.close()
        task_order = {t: i for i, t in enumerate(TASKS)}
        totals, by_task, by = Counter(), Counter(), Counter()
        with atomic_path(job.out / "instructions.jsonl") as tmp, open(tmp, "wb") as out:
            for name in [names[r.name] for r in sorted(job.shards, key=lambda r: r.index)] + ["other"]:
                rows = spill.best(name)
                ok = sorted((r for r in rows.values() if r["status"] == "ok"), key=lambda r: (r["order"], task_order[r["task"]]))
                for r in ok:
                    out.write(dumps(to_record(r, plan.opts.format)) + b"\n")
                by_task.update(r["task"] for r in ok)
                by.update(f"{r['status']}:{r['reason']}" for r in rows.values() if r["status"] != "ok")
                totals.update({"requests": len(rows), "ok": len(ok)})
                for k in ("retries", "prompt_tokens", "completion_tokens", "image_tokens"):
                    totals[k] += sum(r.get(k, 0) for r in rows.values())
    finally:
        spill.close()
        shutil.rmtree(folder, ignore_errors=True)
    return totals, by_task, by


def finalize(jobf: Job, job: JobDir, plan: Plan) -> dict:
    """instructions.jsonl in input order (shard, sample, task) and the manifest's totals."""
    counts, by_task, by = _write_instructions(jobf, job, plan)
    records = job.records()
    sample_rejects, negatives_skipped = Counter(), Counter()
    for rec in records.values():
        sample_rejects.update(rec.get("rejected", {}))
        negatives_skipped.update(rec.get("negatives_skipped", {}))
    totals = {
        "samples": sum(r["samples"] for r in records.values()),
        "samples_rejected": dict(sample_rejects),
        "requests": counts["requests"],
        "instructions": counts["ok"],
        "ok": counts["ok"],
        "rejected": {k.split(":", 1)[1]: v for k, v in sorted(by.items()) if k.startswith("rejected:")},
        "failed": {k.split(":", 1)[1]: v for k, v in sorted(by.items()) if k.startswith("failed:")},
        "hallucinations": by.get("rejected:hallucination", 0),
        **{k: counts[k] for k in ("retries", "prompt_tokens", "completion_tokens", "image_tokens")},
        "by_task": dict(by_task),
        "negatives_skipped": dict(negatives_skipped),
    }
    note = negatives_note(negatives_skipped, plan.opts.objects_field)
    extra = {"format": plan.opts.format, "objects": {k: v for k, v in plan.tables.to_json().items() if k in ("samples", "with_objects")}}
    jobf.write_manifest(job, {**totals, **({"note": note} if note else {})}, extra)
    return {**totals, **({"note": note} if note else {})}


def negatives_note(skipped: Counter, objects_field: str) -> str | None:
    """Why negative questions were not asked, in words (None when all were)."""
    why = {"no_object_metadata": f"the samples' json names no objects (field {objects_field!r}) and no --vocabulary was given",
           "no_absent_object": "every candidate object is in the image"}
    parts = [f"{n} because {why.get(k, k)}" for k, n in skipped.items() if n]
    return f"negative questions not asked: {'; '.join(parts)}" if parts else None


def failure_message(summary: dict, max_failed: float) -> str | None:
    """`synth: 140 of 140 requests failed (connection: 140)` when every request failed or more
    than `max_failed` of them did; None otherwise."""
    if summary.get("complete"):
        failed, total = summary["failed"], summary["requests"]
    else:  # this rank's part of an unfinished job
        run = summary["this_run"]
        failed = {k.split(":", 1)[1]: v for k, v in run["by_reason"].items() if k.startswith("failed:")}
        total = run["sent"]
    n = sum(failed.values())
    if not n or (n < total and n / total <= max_failed):
        return None
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(failed.items(), key=lambda kv: (-kv[1], kv[0]))[:3])
    return f"synth: {n} of {total} requests failed ({reasons}); rerun with --retry-failed to send them again"
