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
import os
import time
from collections import Counter
from pathlib import Path

import orjson

from vlmtool.core.job import Job
from vlmtool.core.shards import (
    JobDir,
    atomic_write,
    dumps,
    expand_inputs,
    read_json,
    shard_refs,
    write_json,
)
from vlmtool.errors import JobFailed, UsageError
from vlmtool.synth.objects import ObjectTables, count_objects, read_vocabulary
from vlmtool.synth.options import FORMATS, SynthOptions
from vlmtool.synth.run import Plan, Run
from vlmtool.synth.tasks import TASKS, load_prompts, parse_tasks
from vlmtool.synth.teachers import CaptionsTeacher, OpenAITeacher

__all__ = ["FORMATS", "SynthOptions", "run_synth"]
_STATUS_RANK = {"ok": 3, "rejected": 2, "failed": 1}


def _read_logs(log_dir: Path) -> dict[str, dict]:
    """The latest terminal row per request key over every rank's log (ok beats rejected beats
    failed, so a request retried after a failure counts once). A torn last line is ignored."""
    done: dict[str, dict] = {}
    for p in sorted(log_dir.glob("requests-*.jsonl")):
        for line in p.read_bytes().split(b"\n"):
            try:
                row = orjson.loads(line) if line else None
            except orjson.JSONDecodeError:
                continue
            if not isinstance(row, dict) or row.get("status") not in _STATUS_RANK or not isinstance(row.get("id"), str):
                continue
            old = done.get(row["id"])
            if old is None or _STATUS_RANK[row["status"]] >= _STATUS_RANK[old["status"]]:
                done[row["id"]] = row
    return done


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
    import dataclasses

    from vlmtool.core.runtime import dist_info

    opts = dataclasses.replace(opts or SynthOptions(), **changes)
    opts.check()
    weights = parse_tasks(opts.tasks)
    prompts = load_prompts(opts.prompts)
    file_vocabulary = read_vocabulary(opts.vocabulary) if opts.vocabulary else None
    refs = shard_refs(expand_inputs(inputs))
    with Job("synth", out, opts, refs, dist_info()) as job:
        _check_files_unchanged(job, prompts, file_vocabulary)
        plan = Plan(opts, prompts, weights, _object_tables(job, opts), file_vocabulary)
        summary = _synth(job, plan)
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


def _synth(jobf: Job, plan: Plan) -> dict:
    opts = plan.opts
    t0 = time.perf_counter()
    job = jobf.records()
    log_dir = job.out / "log"
    done = _read_logs(log_dir)
    if opts.retry_failed:  # reopen the shards that hold failed requests; only those requests are sent again
        failed_shards = {r["shard"] for r in done.values() if r["status"] == "failed"}
        for ref in jobf.refs:
            if ref.name in failed_shards:
                job.record_path(ref).unlink(missing_ok=True)
    teacher = make_teacher(opts)
    pending = job.pending()
    log = _open_log(log_dir / f"requests-{jobf.dist.rank:05d}.jsonl")
    runner = Run(job, teacher, plan, done, log)

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
    this_run = {"shards": len(pending), **{k: runner.stats[k] for k in ("sent", "ok", "rejected", "failed", "retries",
                                                                       "prompt_tokens", "completion_tokens", "image_tokens")},
                "by_reason": dict(runner.reasons), "seconds": round(time.perf_counter() - t0, 3)}
    if not job.all_done():
        return jobf.incomplete(job, this_run, "the last one writes instructions.jsonl")
    return {**jobf.header(), "complete": True, **finalize(jobf, job, plan), "this_run": this_run}


def finalize(jobf: Job, job: JobDir, plan: Plan) -> dict:
    """instructions.jsonl in input order (shard, sample, task) and the manifest's totals."""
    rows = _read_logs(job.out / "log")
    index = {r.name: r.index for r in job.shards}
    task_order = {t: i for i, t in enumerate(TASKS)}
    ok = sorted((r for r in rows.values() if r["status"] == "ok"), key=lambda r: (index.get(r["shard"], 1 << 30), r["order"], task_order[r["task"]]))
    atomic_write(job.out / "instructions.jsonl", b"".join(dumps(to_record(r, plan.opts.format)) + b"\n" for r in ok))
    by = Counter(f"{r['status']}:{r['reason']}" for r in rows.values() if r["status"] != "ok")
    records = job.records()
    sample_rejects, negatives_skipped = Counter(), Counter()
    for rec in records.values():
        sample_rejects.update(rec.get("rejected", {}))
        negatives_skipped.update(rec.get("negatives_skipped", {}))
    totals = {
        "samples": sum(r["samples"] for r in records.values()),
        "samples_rejected": dict(sample_rejects),
        "requests": len(rows),
        "instructions": len(ok),
        "ok": len(ok),
        "rejected": {k.split(":", 1)[1]: v for k, v in by.items() if k.startswith("rejected:")},
        "failed": {k.split(":", 1)[1]: v for k, v in by.items() if k.startswith("failed:")},
        "hallucinations": by.get("rejected:hallucination", 0),
        "retries": sum(r.get("retries", 0) for r in rows.values()),
        "prompt_tokens": sum(r.get("prompt_tokens", 0) for r in rows.values()),
        "completion_tokens": sum(r.get("completion_tokens", 0) for r in rows.values()),
        "image_tokens": sum(r.get("image_tokens", 0) for r in rows.values()),
        "by_task": dict(Counter(r["task"] for r in ok)),
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
