"""`vlmtool synth`: visual instruction data from a teacher, every request's result kept once.

Each request is keyed by a hash of (sample, task, prompt, teacher, model). Results (answers
that passed validation, rejections with their reason, requests that failed every retry) are
appended to `log/requests-RANK.jsonl` and flushed as they arrive; a rerun reads every log,
skips what is done and sends only what is missing (`--retry-failed` sends the failed ones
again). Shards are split across ranks; the rank that finds every shard done writes
`instructions.jsonl` (LLaVA JSON lines, or chat messages with `--format messages`) in input
order, and the manifest with requests, retries, failures and rejections by reason, and tokens.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import orjson

from vlmtool.core.records import ReadOptions, Reject, iter_samples
from vlmtool.core.samples import SampleError
from vlmtool.core.job import Job, free
from vlmtool.core.shards import JobDir, ShardRef, atomic_write, dumps, expand_inputs, shard_refs
from vlmtool.errors import JobFailed, UsageError
from vlmtool.synth.tasks import (TASKS, Request, absent_object, describe_objects, load_prompts, object_names, parse_tasks,
                                 request_key, tasks_for)
from vlmtool.synth.teachers import CaptionsTeacher, OpenAITeacher, Result
from vlmtool.synth.validate import Rejected, normalize, validate
from vlmtool.world import PARTNER, POPULARITY, SHAPES

FORMATS = ("llava", "messages")


def _read_logs(log_dir: Path) -> dict[str, dict]:
    """The latest terminal row per request key over every rank's log (ok beats rejected beats
    failed, so a request retried after a failure counts once). A torn last line is ignored."""
    rank = {"ok": 3, "rejected": 2, "failed": 1}
    done: dict[str, dict] = {}
    for p in sorted(log_dir.glob("requests-*.jsonl")):
        for line in p.read_bytes().split(b"\n"):
            if not line:
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            old = done.get(row["id"])
            if old is None or rank[row["status"]] >= rank[old["status"]]:
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


def make_teacher(teacher: str, base_url: str | None, model: str | None, api_key_env: str, **kw):
    if teacher == "captions":
        return CaptionsTeacher(model or "captions-v1")
    if teacher == "openai":
        if not base_url or not model:
            raise UsageError("--teacher openai needs --base-url (e.g. http://localhost:8000/v1) and --model")
        return OpenAITeacher(base_url, model, api_key=os.environ.get(api_key_env) or None, **kw)
    raise UsageError(f"unknown teacher {teacher!r}: use openai or captions")


def to_record(row: dict, fmt: str) -> dict:
    turns = row["turns"]
    base = {"id": row["id"], "image": row["image"], "shard": row["shard_url"], "key": row["key"], "task": row["task"],
            "teacher": row["teacher"], "model": row["model"]}
    if fmt == "messages":
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


class _Run:
    """The async side: a producer turns samples into requests, workers send them."""

    def __init__(self, job: JobDir, teacher, prompts, weights, per_sample, negative_mode, vocabulary, image_preset, done, log,
                 concurrency, strict, progress, max_pixels):
        self.job, self.teacher, self.prompts, self.weights, self.per_sample = job, teacher, prompts, weights, per_sample
        self.negative_mode, self.vocabulary, self.image_preset = negative_mode, vocabulary, image_preset
        self.done, self.log, self.concurrency, self.strict, self.max_pixels = done, log, concurrency, strict, max_pixels
        self.stats = Counter()
        self.reasons = Counter()  # rejected: / failed: reasons of this run
        # duplicates: the same answer twice for one sample, or a long answer (>= 150 chars) anywhere
        self.seen_answers = {a for r in done.values() if r["status"] == "ok" for a in self._answer_keys(r["key"], r.get("turns", []))}
        self.shard_state: dict[str, dict] = {}
        self.error: BaseException | None = None  # the first exception a worker met; the producer re-raises it
        from tqdm import tqdm

        self.bar = tqdm(desc="synth", unit="req", file=sys.stderr, disable=not progress, dynamic_ncols=True, mininterval=0.5)

    def requests(self, ref: ShardRef, state: dict):
        from vlmtool.budget import image_tokens

        for order, s in enumerate(iter_samples(ref, ReadOptions(max_pixels=self.max_pixels))):
            state["samples"] += 1
            if not isinstance(s, Reject):
                try:
                    s.load_image(draft=(1, 1))  # a teacher must not be sent a corrupt or truncated image
                except SampleError as e:
                    s = Reject(ref.name, s.key, e.reason, e.detail)
            if isinstance(s, Reject):
                if self.strict:
                    raise JobFailed(f"--strict: sample {s.key!r} of {ref.url} rejected: {s.reason}" + (f" ({s.detail})" if s.detail else ""))
                state["rejected"][s.reason] += 1
                state["rejects"].append(s.row())
                continue
            present = object_names(s.meta)
            try:
                img_tokens = image_tokens(self.image_preset, s.width, s.height)
            except Exception:
                img_tokens = 0
            for task in tasks_for(s.key, self.weights, self.per_sample):
                question = absent = None
                if task == "negative":
                    absent = absent_object(s.key, present or [], self.vocabulary, self.negative_mode, dict(zip(SHAPES, POPULARITY)), PARTNER)
                    if absent is None:
                        continue
                    question = f"Is there {'an' if absent[0] in 'aeiou' else 'a'} {absent} in the image?"
                    prompt = self.prompts[task].format(question=question, caption=s.caption, objects=describe_objects(s.meta))
                else:
                    prompt = self.prompts[task].format(caption=s.caption, objects=describe_objects(s.meta), question="")
                key = request_key(s.key, ref.url, task, self.prompts["system"] + "\n" + prompt, self.teacher.name, self.teacher.model)
                prev = self.done.get(key)
                if prev is not None and prev["status"] in ("ok", "rejected"):
                    state["skipped"] += 1
                    continue
                yield (order, Request(key, s.key, ref.name, ref.url, task, prompt, self.prompts["system"], s.image_bytes, s.image_ext,
                                      s.caption, s.meta, question, absent, img_tokens), present)

    async def run(self, shards: list[ShardRef]) -> None:
        queue: asyncio.Queue = asyncio.Queue(maxsize=self.concurrency * 2)
        workers = [asyncio.create_task(self.worker(queue)) for _ in range(self.concurrency)]
        try:
            for ref in shards:
                state = {"samples": 0, "rejected": Counter(), "rejects": [], "skipped": 0, "outstanding": 0, "produced": False,
                         "results": Counter(), "t0": time.perf_counter()}
                self.shard_state[ref.name] = state
                for order, req, present in self.requests(ref, state):
                    state["outstanding"] += 1
                    await queue.put((ref, order, req, present))
                    if self.error:
                        raise self.error
                state["produced"] = True
                self.maybe_finish(ref)
            await queue.join()
            if self.error:
                raise self.error
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            self.bar.close()

    def maybe_finish(self, ref: ShardRef) -> None:
        st = self.shard_state[ref.name]
        if st["produced"] and st["outstanding"] == 0 and not st.get("finished"):
            st["finished"] = True
            self.log.flush()
            self.job.write_record(ref, {"samples": st["samples"], "ok": st["samples"] - sum(st["rejected"].values()),
                                        "rejected": dict(st["rejected"]), "rejects": st["rejects"], "skipped_done": st["skipped"],
                                        "results": dict(st["results"]), "seconds": round(time.perf_counter() - st["t0"], 3)})

    async def worker(self, queue: asyncio.Queue) -> None:
        while True:
            ref, order, req, present = await queue.get()
            if self.error:  # stopping: drain the queue without sending
                queue.task_done()
                continue
            try:
                res: Result = await self.teacher.generate(req)
                row = self.judge(req, res, present)
                row.update({"id": req.key, "key": req.sample_key, "shard": req.shard, "shard_url": req.shard_url, "order": order,
                            "task": req.task, "teacher": self.teacher.name, "model": self.teacher.model,
                            "image": f"{req.shard}/{req.sample_key}.{req.image_ext or 'jpg'}", "retries": res.retries,
                            "errors": res.errors, "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
                            "image_tokens": req.image_tokens})
                self.log.write(dumps(row) + b"\n")
                self.log.flush()  # a result on disk is a result the rerun will not ask for again
                st = self.shard_state[ref.name]
                st["results"][row["status"]] += 1
                self.stats["sent"] += 1
                self.stats[row["status"]] += 1
                self.stats["retries"] += res.retries
                self.stats["prompt_tokens"] += res.prompt_tokens
                self.stats["completion_tokens"] += res.completion_tokens
                self.stats["image_tokens"] += req.image_tokens
                if row["status"] != "ok":
                    self.reasons[f"{row['status']}:{row['reason']}"] += 1
                    if self.strict and row["status"] == "failed":
                        raise JobFailed(f"--strict: request for {req.sample_key} ({req.task}) failed: {row['reason']}")
                self.bar.update()
                st["outstanding"] -= 1
                self.maybe_finish(ref)
            except Exception as e:  # a job failure (--strict) or a bug: stop the run, never hang it
                self.error = self.error or e
            finally:
                queue.task_done()

    def judge(self, req: Request, res: Result, present: list[str] | None) -> dict:
        if res.failed:
            return {"status": "failed", "reason": res.failed}
        if res.turns is None:
            return {"status": "rejected", "reason": "unparsable", "detail": res.unparsable}
        try:
            turns = validate(res.turns, req.task, present, self.vocabulary, res.finish_reason, req.absent)
        except Rejected as e:
            return {"status": "rejected", "reason": e.reason, "detail": e.detail, "turns": res.turns}
        keys = self._answer_keys(req.sample_key, turns)
        if any(a in self.seen_answers for a in keys):
            return {"status": "rejected", "reason": "duplicate", "turns": turns}
        self.seen_answers.update(keys)
        return {"status": "ok", "reason": None, "turns": turns}

    @staticmethod
    def _answer_keys(sample_key: str, turns: list[dict]) -> list[str]:
        out = []
        for t in turns:
            norm = normalize(t["answer"])
            out.append(f"{sample_key}\x1f{norm}")
            if len(t["answer"]) >= 150:
                out.append(norm)
        return out


@dataclass(frozen=True)
class SynthOptions:
    """`vlmtool synth`'s options (see its --help). The free ones may change on a rerun."""

    teacher: str = "captions"
    base_url: str | None = free(None)  # another server of the same model may finish the job
    model: str | None = None
    tasks: str = "conversation,detail,reasoning,negative"
    per_sample: int = 1
    fmt: str = "llava"
    negative_mode: str = "adversarial"
    image_preset: str = "gpt-4o"
    prompts: str | None = None
    vocabulary: str | None = None
    structured: bool = True
    max_tokens: int = 512
    max_pixels: int | None = None
    api_key_env: str = free("OPENAI_API_KEY")
    concurrency: int = free(32)
    timeout: float = free(60.0)
    max_retries: int = free(5)
    backoff: float = free(0.5)
    requests_per_s: float | None = free(None)
    tokens_per_min: float | None = free(None)
    retry_failed: bool = free(False)
    strict: bool = free(False)
    progress: bool = free(True)


def run_synth(inputs: list[str], out: str, **kw) -> dict:
    opts = SynthOptions(**kw)
    from vlmtool.core.runtime import dist_info

    dist = dist_info()
    refs = shard_refs(expand_inputs(inputs))
    with Job("synth", out, opts, refs, dist) as jobf:
        return _synth(jobf, opts)


def _synth(jobf: Job, opts: SynthOptions) -> dict:
    from vlmtool.core.samples import DEFAULT_MAX_PIXELS
    from vlmtool.synth.tasks import NEGATIVE_MODES

    (teacher, base_url, model, api_key_env, tasks, per_sample, fmt, concurrency, timeout, max_retries, backoff, requests_per_s,
     tokens_per_min, structured, max_tokens, prompts, negative_mode, image_preset, vocabulary, retry_failed, strict, max_pixels,
     progress) = (opts.teacher, opts.base_url, opts.model, opts.api_key_env, opts.tasks, opts.per_sample, opts.fmt, opts.concurrency,
                  opts.timeout, opts.max_retries, opts.backoff, opts.requests_per_s, opts.tokens_per_min, opts.structured,
                  opts.max_tokens, opts.prompts, opts.negative_mode, opts.image_preset, opts.vocabulary, opts.retry_failed,
                  opts.strict, opts.max_pixels, opts.progress)
    if fmt not in FORMATS:
        raise UsageError(f"--format is one of {', '.join(FORMATS)}")
    if negative_mode not in NEGATIVE_MODES:
        raise UsageError(f"--negatives is one of {', '.join(NEGATIVE_MODES)}")
    if concurrency < 1 or per_sample < 1:
        raise UsageError("--concurrency and --per-sample must be at least 1")
    t0 = time.perf_counter()
    dist = jobf.dist
    refs = jobf.refs
    weights = parse_tasks(tasks)
    prompt_set = load_prompts(prompts)
    vocab = list(SHAPES) + ([w.strip() for w in Path(vocabulary).read_text().splitlines() if w.strip()] if vocabulary else [])
    job = jobf.records()
    log_dir = job.out / "log"
    done = _read_logs(log_dir)
    if retry_failed:  # reopen the shards that hold failed requests; only those requests are sent again
        failed_shards = {r["shard"] for r in done.values() if r["status"] == "failed"}
        for ref in refs:
            if ref.name in failed_shards:
                job.record_path(ref).unlink(missing_ok=True)
    t = make_teacher(teacher, base_url, model, api_key_env, **({} if teacher == "captions" else dict(
        concurrency=concurrency, timeout=timeout, max_retries=max_retries, backoff=backoff, max_tokens=max_tokens,
        structured=structured, requests_per_s=requests_per_s, tokens_per_min=tokens_per_min)))
    pending = job.pending()
    log = _open_log(log_dir / f"requests-{dist.rank:05d}.jsonl")
    runner = _Run(job, t, prompt_set, weights, per_sample, negative_mode, vocab, image_preset, done, log, concurrency, strict,
                  progress, max_pixels or DEFAULT_MAX_PIXELS)

    async def main():
        try:
            await runner.run(pending)
        finally:
            if hasattr(t, "aclose"):
                await t.aclose()

    try:
        asyncio.run(main())
    finally:
        log.close()
    this_run = {"shards": len(pending), **{k: runner.stats[k] for k in ("sent", "ok", "rejected", "failed", "retries",
                                                                       "prompt_tokens", "completion_tokens", "image_tokens")},
                "by_reason": dict(runner.reasons), "seconds": round(time.perf_counter() - t0, 3)}
    base = {"job": "synth", "out": str(job.out), "rank": dist.rank, "world_size": dist.world_size, "this_run": this_run}
    if not job.all_done():
        return {**base, "complete": False, "note": "other ranks still running: the last one writes instructions.jsonl"}
    return {**base, "complete": True, **finalize(jobf, job, fmt)}


def finalize(jobf: Job, job: JobDir, fmt: str) -> dict:
    """instructions.jsonl in input order (shard, sample, task) and the manifest's totals."""
    rows = _read_logs(job.out / "log")
    index = {r.name: r.index for r in job.shards}
    task_order = {t: i for i, t in enumerate(TASKS)}
    ok = sorted((r for r in rows.values() if r["status"] == "ok"), key=lambda r: (index.get(r["shard"], 1 << 30), r["order"], task_order[r["task"]]))
    atomic_write(job.out / "instructions.jsonl", b"".join(dumps(to_record(r, fmt)) + b"\n" for r in ok))
    by = Counter(f"{r['status']}:{r['reason']}" for r in rows.values() if r["status"] != "ok")
    records = job.records()
    sample_rejects = Counter()
    for rec in records.values():
        sample_rejects.update(rec.get("rejected", {}))
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
    }
    jobf.write_manifest(job, totals, {"format": fmt})
    return totals
