"""The async side of `vlmtool synth`: a producer turns each shard's samples into requests,
workers send them to the teacher, and every result is logged (and flushed) as it arrives."""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from vlmtool.core.job import redact
from vlmtool.core.records import ReadOptions, Reject, iter_samples
from vlmtool.core.samples import Sample, SampleError, clean_detail
from vlmtool.core.shards import JobDir, ShardRef, dumps
from vlmtool.errors import JobFailed
from vlmtool.synth.objects import (
    ObjectTables,
    absent_object,
    describe_objects,
    sample_objects,
)
from vlmtool.synth.options import NEGATIVE_MODES, SynthOptions
from vlmtool.synth.tasks import MAX_PROBES, Request, article, presence_probes, probe_question, request_key, tasks_for, unit
from vlmtool.synth.teachers import Result, presence_answers
from vlmtool.synth.validate import Rejected, mentioned, normalize, validate


@dataclass
class Plan:
    """What every request of a job is made from."""

    opts: SynthOptions
    prompts: dict[str, str]
    weights: dict[str, float]
    tables: ObjectTables  # labels counted over the inputs
    file_vocabulary: list[str] | None  # --vocabulary: the candidate absent objects

    @property
    def read(self) -> ReadOptions:
        return ReadOptions.of(self.opts)

    def __post_init__(self):
        # the names an answer is checked against for objects that are not there
        self.vocabulary = sorted(set(self.tables.vocabulary) | set(self.file_vocabulary or []))

    def negative(self, s: Sample, present: list[str] | None, salt: str = "", mode: str | None = None,
                 exclude: tuple[str, ...] = (), surplus: Counter | None = None) -> tuple[str | None, str | None]:
        """(the object a negative question asks about, None) or (None, why none is asked). A
        `salt` draws another one for the same sample (a conversation's balancing probe); `mode`
        overrides --negatives; `exclude` are objects already asked about; `surplus` (each
        object's yeses minus noes so far in the shard, with --balance) steers the draw."""
        if present is None and not self.file_vocabulary:
            return None, "no_object_metadata"  # nothing says what is absent: asking would guess
        candidates = self.file_vocabulary or self.tables.vocabulary
        if present is None:  # objects the caption names may well be there
            named = mentioned(s.caption or "", candidates)
            candidates = [c for c in candidates if c not in named]
        candidates = [c for c in candidates if c not in exclude]
        absent = absent_object(s.key + salt, present or [], candidates, mode or self.opts.negatives, self.tables, surplus)
        return (absent, None) if absent else (None, "no_absent_object")

    def probe_absents(self, s: Sample, present: list[str] | None, other: tuple[str, ...] | None = None,
                      surplus: Counter | None = None) -> tuple[str, ...]:
        """A conversation's absent objects, one per POPE setting: --negatives' choice first (the
        conversation's `absent`), then the other settings' choices, each a different object.
        `other` (the conversation's): the probes task's, chosen past those where enough objects
        are absent."""
        taken = other or ()
        out: list[str] = []
        for mode in (self.opts.negatives, *(m for m in NEGATIVE_MODES if m != self.opts.negatives)):
            salt = ":conversation" + ("" if not out else f":{mode}") + (":probes" if other is not None else "")
            absent, _ = self.negative(s, present, salt=salt, mode=mode, exclude=(*taken, *out), surplus=surplus)
            if absent is None and other is not None:  # few objects absent: the conversation's may be asked again
                absent, _ = self.negative(s, present, salt=salt, mode=mode, exclude=tuple(out), surplus=surplus)
            if absent:
                out.append(absent)
        return tuple(out)


@dataclass
class Draws:
    """One sample's draws, each made once: the conversation's absent objects and each task's order
    of the objects that are there. With --balance, `surplus` (each task's yes answers minus its
    no answers about each object so far in the shard, counted as requests are made in the
    shard's order, so a rerun draws the same objects) orders the objects that are there (those
    whose noes lead first) and, with `drawn` (--balance all), steers the negatives."""

    plan: Plan
    s: Sample
    present: list[str] | None
    surplus: defaultdict | None
    drawn: bool
    conversation: tuple[str, ...] | None = None
    asked: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def tally(self, task: str) -> Counter | None:
        return self.surplus[task] if self.drawn and self.surplus is not None else None

    def conversation_absents(self) -> tuple[str, ...]:
        if self.conversation is None:
            self.conversation = self.plan.probe_absents(self.s, self.present, surplus=self.tally("conversation"))
        return self.conversation

    def present_order(self, task: str) -> tuple[str, ...]:
        """The objects that are there, those whose noes lead in `task` first (the probes task puts
        the conversation's yeses last, so the two ask about other objects where they can); ()
        without --balance."""
        if self.surplus is None or not self.present:
            return ()
        if task not in self.asked:
            avoid = set(self.present_order("conversation")[:MAX_PROBES]) if task == "probes" else set()
            lead = self.surplus[task]
            self.asked[task] = tuple(sorted(dict.fromkeys(self.present),
                                            key=lambda o: (o in avoid, lead[o], unit(self.s.key, task, o))))
        return self.asked[task]

    def count(self, task: str, answers: list[tuple[str, bool]]) -> None:
        if self.surplus is not None:
            for label, yes in answers:
                self.surplus[task][label] += 1 if yes else -1


def _decoded(ref: ShardRef, s: Sample | Reject) -> Sample | Reject:
    """The sample, if its image decodes (a teacher must not be sent a corrupt or truncated one)."""
    if isinstance(s, Reject):
        return s
    try:
        s.load_image(draft=(1, 1))
    except SampleError as e:
        return Reject(ref.name, s.key, e.reason, e.detail)
    return s


LONG_ANSWER = 150  # chars: an answer this long is a duplicate wherever it appeared before


def answer_digest(norm: str) -> int:
    """A long answer's normalized text as 8 bytes (blake2b): the job-wide duplicate set holds
    these, a fixed size per answer, never the texts."""
    return int.from_bytes(hashlib.blake2b(norm.encode(), digest_size=8).digest(), "little")


def answer_keys(turns: list[dict]) -> tuple[list[str], list[int]]:
    """(each answer normalized: a duplicate within its sample, the digests of the long ones:
    a duplicate anywhere)."""
    norms, longs = [], []
    for t in turns:
        norm = normalize(t["answer"])
        norms.append(norm)
        if len(t["answer"]) >= LONG_ANSWER:
            longs.append(answer_digest(norm))
    return norms, longs


@dataclass
class Seen:
    """What a rerun knows from the logs, bounded by the pending shards: the best status of each
    request of a pending shard (the only requests that can be skipped or sent), the answers of
    each pending shard's samples, and the digests of every long answer of the job."""

    status: dict[str, str] = field(default_factory=dict)  # request id -> best status (pending shards)
    answers: dict[str, set[str]] = field(default_factory=dict)  # shard -> {sample key \x1f normalized answer}
    long: set[int] = field(default_factory=set)  # answer_digest of every ok long answer

    def add_ok(self, shard: str, sample_key: str, turns: list[dict], in_flight: bool) -> None:
        norms, longs = answer_keys(turns)
        self.long.update(longs)
        if in_flight:
            self.answers.setdefault(shard, set()).update(f"{sample_key}\x1f{n}" for n in norms)


def new_state() -> dict:
    return {"samples": 0, "rejected": Counter(), "rejects": [], "skipped": 0, "outstanding": 0, "produced": False,
            "results": Counter(), "negatives_skipped": Counter(), "surplus": defaultdict(Counter), "t0": time.perf_counter()}


class Run:
    """One rank's run over its pending shards."""

    def __init__(self, job: JobDir, teacher, plan: Plan, seen: Seen, log):
        self.job, self.teacher, self.plan, self.log = job, teacher, plan, log
        self.opts = plan.opts
        self.stats = Counter()
        self.reasons = Counter()  # rejected: / failed: reasons of this run
        # duplicates: the same answer twice for one sample (kept while its shard is in flight),
        # or a long answer (>= LONG_ANSWER chars) anywhere in the job (kept as digests)
        self.seen = seen
        self.shard_state: dict[str, dict] = {}
        self.error: BaseException | None = None  # the first exception a worker met; the producer re-raises it
        from tqdm import tqdm

        self.bar = tqdm(desc="synth", unit="req", file=sys.stderr, disable=not self.opts.progress, dynamic_ncols=True, mininterval=0.5)

    # ---- producing requests
    def requests(self, ref: ShardRef, state: dict):
        for order, s in enumerate(iter_samples(ref, self.plan.read, objects_field=self.opts.objects_field)):
            state["samples"] += 1
            s = _decoded(ref, s)
            if isinstance(s, Reject):
                if self.opts.strict:
                    raise s.strict_error(ref.url)
                state["rejected"][s.reason] += 1
                state["rejects"].append(s.row())
                continue
            yield from self._sample_requests(ref, order, s, state)

    def _image_tokens(self, s: Sample) -> int:
        from vlmtool.budget import image_tokens

        try:
            return image_tokens(self.opts.image_preset, s.width, s.height)
        except Exception:  # noqa: BLE001 -- a size the preset cannot plan: the report counts it as 0
            return 0

    def _sample_requests(self, ref: ShardRef, order: int, s: Sample, state: dict):
        objects = sample_objects(s.meta, self.opts.objects_field)
        present = [o["label"] for o in objects] if objects is not None else None
        img_tokens = self._image_tokens(s)
        system = self.plan.prompts["system"]
        # --balance: each task's yes answers minus its no answers about each object so far in this shard
        draws = Draws(self.plan, s, present, state["surplus"] if self.opts.balance != "none" else None, self.opts.balance == "all")
        for task in tasks_for(s.key, self.plan.weights, self.opts.per_sample):
            question = absent = None
            absents: tuple[str, ...] = ()
            if task == "negative":
                absent, why = self.plan.negative(s, present, surplus=draws.tally("negative"))
                if absent is None:
                    state["negatives_skipped"][why] += 1
                    continue
                question = f"Is there {article(absent)} in the image?"
            elif task == "probes":
                absents = self.plan.probe_absents(s, present, other=draws.conversation_absents(),
                                                  surplus=draws.tally("probes")) if present else ()
                if not absents:
                    state["negatives_skipped"]["no_object_metadata" if present is None else "no_absent_object"] += 1
                    continue
                absent = absents[0]
                there = list(draws.present_order(task) or present)
                question = "\n".join(probe_question(o) for o, _ in presence_probes(there, absents, first=True))
            elif task == "conversation" and getattr(self.teacher, "balances_probes", False):
                absents = draws.conversation_absents()  # its noes to the conversation's yeses
                absent = absents[0] if absents else None
            prompt = self.plan.prompts[task].format(caption=s.caption, objects=describe_objects(objects), question=question or "")
            key = request_key(s.key, ref.url, task, system + "\n" + prompt, self.teacher.name, self.teacher.model)
            req = Request(key, s.key, ref.name, ref.url, task, prompt, system, s.image_bytes, s.image_ext, s.caption,
                          objects, s.width, s.height, question, absent, img_tokens, absents,
                          draws.present_order(task) if task in ("negative", "probes", "conversation") else ())
            draws.count(task, presence_answers(self.teacher, req))
            if self.seen.status.get(key) in ("ok", "rejected"):
                state["skipped"] += 1
                continue
            yield (order, req, present)

    async def run(self, shards: list[ShardRef]) -> None:
        queue: asyncio.Queue = asyncio.Queue(maxsize=self.opts.concurrency * 2)
        workers = [asyncio.create_task(self.worker(queue)) for _ in range(self.opts.concurrency)]
        try:
            for ref in shards:
                state = self.shard_state[ref.name] = new_state()
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
        st = self.shard_state.get(ref.name)
        if st is not None and st["produced"] and st["outstanding"] == 0:
            del self.shard_state[ref.name]  # a finished shard's state and answers are not needed any more
            self.seen.answers.pop(ref.name, None)
            self.log.flush()
            self.job.write_record(ref, {"samples": st["samples"], "ok": st["samples"] - sum(st["rejected"].values()),
                                        "rejected": dict(st["rejected"]), "rejects": st["rejects"], "skipped_done": st["skipped"],
                                        "results": dict(st["results"]), "negatives_skipped": dict(st["negatives_skipped"]),
                                        "seconds": round(time.perf_counter() - st["t0"], 3)})

    # ---- sending them
    async def _generate(self, req: Request) -> Result:
        """The teacher's result; a teacher that raises fails this request, never the job."""
        try:
            return await self.teacher.generate(req)
        except Exception as e:  # noqa: BLE001 -- whatever one request meets, the others go on
            detail = redact(clean_detail(f"{type(e).__name__}: {e}"))
            if hasattr(self.teacher, "scrub"):
                detail = self.teacher.scrub(detail.encode()).decode("utf-8", "replace")
            return Result(failed="teacher_error", errors=["teacher_error"], detail=detail)

    async def worker(self, queue: asyncio.Queue) -> None:
        while True:
            ref, order, req, present = await queue.get()
            if self.error:  # stopping: drain the queue without sending
                queue.task_done()
                continue
            try:
                res = await self._generate(req)
                self.record(ref, order, req, res, present)
            except Exception as e:  # noqa: BLE001 -- a job failure (--strict) or a bug: stop the run, never hang it
                self.error = self.error or e
            finally:
                queue.task_done()

    def record(self, ref: ShardRef, order: int, req: Request, res: Result, present: list[str] | None) -> None:
        row = self.judge(req, res, present)
        row.update({"id": req.key, "key": req.sample_key, "shard": req.shard, "shard_url": redact(req.shard_url), "order": order,
                    "task": req.task, "teacher": self.teacher.name, "model": self.teacher.model,
                    "image": f"{req.shard}/{req.sample_key}.{req.image_ext or 'jpg'}", "retries": res.retries,
                    "errors": res.errors, "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
                    "image_tokens": req.image_tokens})
        self.log.write(dumps(row) + b"\n")
        self.log.flush()  # a result on disk is a result the rerun will not ask for again
        st = self.shard_state[ref.name]
        st["results"][row["status"]] += 1
        self.stats.update({"sent": 1, row["status"]: 1, "retries": res.retries, "prompt_tokens": res.prompt_tokens,
                           "completion_tokens": res.completion_tokens, "image_tokens": req.image_tokens})
        if row["status"] != "ok":
            self.reasons[f"{row['status']}:{row['reason']}"] += 1
            if self.opts.strict and row["status"] == "failed":
                raise JobFailed(f"--strict: request for {req.sample_key} ({req.task}) failed: {row['reason']}")
        self.bar.update()
        st["outstanding"] -= 1
        self.maybe_finish(ref)

    def judge(self, req: Request, res: Result, present: list[str] | None) -> dict:
        if res.failed:
            return {"status": "failed", "reason": res.failed, **({"detail": res.detail} if res.detail else {})}
        if res.turns is None:
            return {"status": "rejected", "reason": "unparsable", "detail": res.unparsable}
        try:
            turns = validate(res.turns, req.task, present, self.plan.vocabulary, res.finish_reason, req.absent, req.absents)
        except Rejected as e:
            return {"status": "rejected", "reason": e.reason, "detail": e.detail, "turns": res.turns}
        norms, longs = answer_keys(turns)
        mine = self.seen.answers.get(req.shard, ())
        if any(f"{req.sample_key}\x1f{n}" in mine for n in norms) or any(d in self.seen.long for d in longs):
            return {"status": "rejected", "reason": "duplicate", "turns": turns}
        self.seen.add_ok(req.shard, req.sample_key, turns, in_flight=True)
        return {"status": "ok", "reason": None, "turns": turns}
