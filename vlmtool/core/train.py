"""The training scaffold every trainer uses (clip-train, and the VLM trainer): a shuffled endless
stream over this rank's shards, the learning-rate schedule, the step loop with its progress bar
and train log, checkpoints of the training state and exact resume, and DDP under torchrun.

Exact resume: the stream is a pure function of (seed, rank, worker, epoch), so the position in it
is one number, the count of items the trainer consumed. A checkpoint stores that count with the
optimizer, the step and the RNG states; a resumed run fast-forwards the stream by that count and
restores the RNGs, so it continues with the very batches an uninterrupted run would have seen.

`TrainRun` is one run's context (job, options, ranks, device, the state it resumes from);
`train_run(...)` opens it (every rank needs a shard, the job folder, the process group), and it
owns what every trainer does alike: `resume(optimizer)`, `fit(...)` (the loop, with a save that
runs on the main rank only) and `summary(...)` (steps and the loss at the start and the end). A
trainer writes only its own model, its loss and its own lines of the summary.
"""

from __future__ import annotations

import math
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from vlmtool.core.records import ReadOptions, Reject, iter_samples
from vlmtool.core.runtime import loader_worker
from vlmtool.core.samples import SampleError
from vlmtool.core.shards import ShardRef, atomic_path, dumps
from vlmtool.errors import UsageError

STATE_FILE = "train_state.pt"
REJECT_BYTES = 256  # what a cached Reject is counted as (its names and reason)
LOG_FILE = "train_log.jsonl"


# ---------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class EpochEnd:
    epoch: int
    read: int = 0  # items this worker read in the pass (they may still sit in the shuffle buffer)


class TrainStream:
    """Endless shuffled prepared samples from this rank's shards (DataLoader workers split the
    rank's shards by worker id; each worker owns whole shards). Each epoch reshuffles the shard
    order; a buffer of `buffer` items shuffles samples. Yields `prepare(sample)` results,
    Rejects, and an EpochEnd after every pass. `read_shard(ref)` overrides how a shard becomes
    items (default: the core record stream, then `prepare`).

    `cache_bytes` > 0 keeps each shard's items (`item_bytes(item)` each, a Reject counted as
    REJECT_BYTES) in memory after the shard's first whole pass, while they fit in that many
    bytes in all: later epochs yield them again without reading or preparing the shard. The
    stream is the same item for item, so training gives the same weights; a shard that does not
    fit is read again each epoch. The items are shared between epochs: consumers must not
    change them in place."""

    def __init__(self, shards: list[ShardRef], prepare: Callable, seed: int, rank: int, world: int, buffer: int = 1000,
                 read: ReadOptions = ReadOptions(), read_shard: Callable[[ShardRef], Iterator] | None = None,
                 cache_bytes: int = 0, item_bytes: Callable[[Any], int] | None = None):
        self.shards, self.prepare, self.seed, self.rank, self.world = shards, prepare, seed, rank, world
        self.buffer, self.read, self.read_shard = buffer, read, read_shard
        self.cache_bytes, self.item_bytes = cache_bytes, item_bytes
        self.cache: dict[str, list] = {}  # ShardRef.url -> its items, in order (per worker process: each owns whole shards)
        self.cached_bytes = 0

    def _items(self, ref: ShardRef) -> Iterator:
        if self.read_shard is not None:
            yield from self.read_shard(ref)
            return
        for s in iter_samples(ref, self.read):
            if isinstance(s, Reject):
                yield s
                continue
            try:
                yield self.prepare(s)
            except SampleError as e:
                yield Reject(ref.name, s.key, e.reason, e.detail)

    def _cached(self, ref: ShardRef) -> Iterator:
        """The shard's items: from the cache, or read (and kept when the whole shard fits)."""
        hit = self.cache.get(ref.url)
        if hit is not None:
            yield from hit
            return
        kept: list | None = [] if self.cache_bytes > 0 and self.item_bytes is not None else None
        size = 0
        for item in self._items(ref):
            if kept is not None:
                size += REJECT_BYTES if isinstance(item, Reject) else self.item_bytes(item)
                if self.cached_bytes + size > self.cache_bytes:
                    kept = None  # over the budget: this shard streams, now and later
                else:
                    kept.append(item)
            yield item
        if kept is not None:  # read to its end (a consumer that stopped early never gets here)
            self.cache[ref.url] = kept
            self.cached_bytes += size

    def __iter__(self):
        wid, nw = loader_worker()
        rng = random.Random(hash((self.seed, self.rank, wid)))
        buf: list = []
        epoch = 0
        while True:
            read = 0
            order = list(self.shards)
            random.Random(hash((self.seed, epoch))).shuffle(order)
            mine = order[self.rank :: self.world][wid::nw]
            if not mine:  # more workers than this rank's shards: the others carry on
                return
            for ref in mine:
                for item in self._cached(ref):
                    if isinstance(item, Reject):
                        yield item
                        continue
                    read += 1
                    if len(buf) < self.buffer:
                        buf.append(item)
                    else:
                        i = rng.randrange(len(buf))
                        yield buf[i]
                        buf[i] = item
            epoch += 1
            yield EpochEnd(epoch, read)


def length_grouped(items: Iterator, size: int, length: Callable[[Any], int], groups: int = 16, seed: int = 0) -> Iterator:
    """The stream with batches of similar length (transformers' `group_by_length`, LLaVA's
    length-grouped sampler): read `groups * size` items, sort them by `length`, cut them into
    batches of `size` and hand those out in a shuffled order, so a batch pads to its own longest
    item rather than the stream's. Rejects and EpochEnds pass straight through.

    A pure function of the input stream and `seed`, and every group is a whole number of batches,
    so a `Batcher` over it still resumes exactly by the count of items consumed."""
    if groups <= 1:
        yield from items
        return
    rng = random.Random(f"length_grouped:{seed}")
    buf: list = []
    for item in items:
        if isinstance(item, (Reject, EpochEnd)):
            yield item
            continue
        buf.append(item)
        if len(buf) == groups * size:
            buf.sort(key=length)  # stable: ties keep the shuffled order
            batches = [buf[i : i + size] for i in range(0, len(buf), size)]
            rng.shuffle(batches)
            for b in batches:
                yield from b
            buf = []


class Batcher:
    """Groups a TrainStream's items into batches of `size`, counting rejects and epochs, and
    the items consumed (the data position a checkpoint stores)."""

    def __init__(self, items: Iterator, size: int, skip: int = 0):
        self.items, self.size = items, size
        self.consumed = 0
        self.rejected: dict[str, int] = {}
        self.reject_rows: dict[tuple, str] = {}  # (shard, key, reason) -> detail, each bad sample once however often read
        self.epochs = 0
        for _ in range(skip):  # resume: the same items an uninterrupted run consumed, dropped
            self._next()

    def _next(self):
        item = next(self.items)
        self.consumed += 1
        if isinstance(item, Reject):
            self.rejected[item.reason] = self.rejected.get(item.reason, 0) + 1
            self.reject_rows.setdefault((item.shard, item.key, item.reason), item.detail)
        elif isinstance(item, EpochEnd):
            self.epochs += 1
        return item

    def next_batch(self) -> list:
        out: list = []
        while len(out) < self.size:
            item = self._next()
            if not isinstance(item, (Reject, EpochEnd)):
                out.append(item)
        return out


# ---------------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class Schedule:
    """Linear warmup to `lr`, then cosine decay to `min_ratio * lr` at `steps`."""

    lr: float
    steps: int
    warmup: int = 0
    min_ratio: float = 0.0

    def at(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        t = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * (self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


# ---------------------------------------------------------------------------------- state


def rng_state() -> dict:
    import numpy as np
    import torch

    st = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": [st[0], torch.from_numpy(st[1].copy()), int(st[2]), int(st[3]), float(st[4])]}


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy(), n[2], n[3], n[4]))


def save_state(out: Path, optimizer, step: int, consumed: int, extra: dict | None = None) -> None:
    """The training state beside the model: optimizer, step, data position, RNG states."""
    import torch

    state = {"optimizer": optimizer.state_dict(), "step": step, "consumed": consumed, "rng": rng_state(), **(extra or {})}
    with atomic_path(out / STATE_FILE) as tmp:
        torch.save(state, tmp)


def load_state(out: Path) -> dict | None:
    """The saved training state (weights_only: a checkpoint never runs code), or None."""
    import torch

    p = out / STATE_FILE
    if not p.exists():
        return None
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or holding objects weights_only refuses
        raise UsageError(f"{p} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}): "
                         f"delete it to start this run over, or use another --out") from None
    if not isinstance(state, dict) or not {"optimizer", "step", "consumed", "rng"} <= state.keys():
        raise UsageError(f"{p} is not a training state written by vlmtool: delete it to start this run over, or use another --out")
    return state


def write_rejects(path: Path, rows: dict[tuple, str]) -> int:
    """rejects.jsonl of a training run: one line per (shard, key, reason), merged with the lines
    an earlier run of the same folder wrote; returns the count."""
    import orjson

    have: dict[tuple, str] = {}
    if path.exists():
        for line in path.read_bytes().splitlines():
            try:
                r = orjson.loads(line)
                have[(r["shard"], r["key"], r["reason"])] = r.get("detail", "")
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
    have.update({k: v for k, v in rows.items() if k not in have})
    from vlmtool.core.shards import atomic_write

    atomic_write(path, b"".join(dumps({"shard": s, "key": k, "reason": r, "detail": d}) + b"\n"
                                for (s, k, r), d in sorted(have.items())))
    return len(have)


# ---------------------------------------------------------------------------------- loop


@dataclass
class LoopResult:
    step: int
    losses: list
    stopped_early: bool
    seconds: float
    samples: int
    startup: float = 0.0  # seconds until the first batch arrived (the loader's start: workers, shards, shuffle buffer)


def train_loop(*, step: int, steps: int, next_batch: Callable[[], Any], train_step: Callable[[Any, float, int], dict],
               schedule: Schedule, save: Callable[[int], None], save_every: int, is_main: bool, log_path: Path | None,
               time_limit: float | None = None, progress: bool = True, desc: str = "train", batch_size: int = 0) -> LoopResult:
    """Run steps `step+1 .. steps`: each takes a batch, sets the learning rate, calls
    `train_step(batch, lr, step)` (which returns metrics, `loss` among them), logs, and saves
    every `save_every` steps, at the end and when `time_limit` seconds have passed."""
    from tqdm import tqdm

    losses: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(total=steps, initial=step, desc=desc, unit="step", file=sys.stderr, disable=not progress or not is_main,
               dynamic_ncols=True, mininterval=0.5)
    log = open(log_path, "ab") if (is_main and log_path is not None) else None
    stopped_early = False
    done = 0
    startup = 0.0
    try:
        while step < steps:
            batch = next_batch()
            if not done:
                startup = time.perf_counter() - t0
            lr = schedule.at(step)
            metrics = train_step(batch, lr, step)
            step += 1
            done += 1
            losses.append(float(metrics["loss"]))
            rate = done * batch_size / max(1e-9, time.perf_counter() - t0)
            bar.update()
            bar.set_postfix(loss=f"{losses[-1]:.3f}", samples_s=f"{rate:.0f}", refresh=False)
            if log is not None:
                log.write(dumps({"step": step, "lr": lr, **{k: round(float(v), 6) for k, v in metrics.items()}}) + b"\n")
            timed_out = time_limit is not None and time.perf_counter() - t0 > time_limit
            if step % save_every == 0 or step == steps or timed_out:
                if log is not None:
                    log.flush()
                save(step)
            if timed_out:
                stopped_early = True
                break
    finally:
        bar.close()
        if log is not None:
            log.close()
    return LoopResult(step, losses, stopped_early, time.perf_counter() - t0, done * batch_size, startup)


def trim_log(log_path: Path, step: int) -> None:
    """Drop log rows past `step` (steps a killed run did after its last checkpoint, which the
    resumed run does again), so every step is logged once."""
    if not log_path.exists():
        return
    import orjson

    keep = []
    for line in log_path.read_bytes().splitlines():
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a line torn by the kill
        if row.get("step", 0) <= step:
            keep.append(line + b"\n")
    from vlmtool.core.shards import atomic_write

    atomic_write(log_path, b"".join(keep))


def barrier(use_dist: bool) -> None:
    if use_dist:
        import torch.distributed as td

        td.barrier()


# ---------------------------------------------------------------------------------- the run


def check_ranks(refs: list[ShardRef], world_size: int) -> None:
    """Every rank reads shards of its own: refuse a run with fewer shards than ranks."""
    if len(refs) < world_size:
        raise UsageError(f"{len(refs)} shard(s) for {world_size} ranks: every rank needs at least one shard")


@dataclass
class TrainRun:
    """One training run's context: its job folder, options (steps, batch_size, save_every,
    time_limit, progress), ranks and device, and the saved state it resumes from (None: a fresh
    run). `step` and `consumed` (the data position) are where the loop starts."""

    job: Any  # core.job.Job
    opts: Any
    out: Path
    dist: Any  # core.runtime.Dist
    dev: Any
    use_dist: bool = False
    state: dict | None = None
    step: int = 0
    consumed: int = 0

    def resume(self, optimizer) -> None:
        """Restore the optimizer, the step, the data position and the RNG states from the saved
        state, and drop the log rows of steps a killed run did after it."""
        if self.state is None:
            return
        from vlmtool.core.job import log

        optimizer.load_state_dict(self.state["optimizer"])
        self.step, self.consumed = int(self.state["step"]), int(self.state["consumed"])
        set_rng_state(self.state["rng"])
        trim_log(self.out / LOG_FILE, self.step)
        log(self.job.name, f"resuming {self.out} at step {self.step}")

    def fit(self, batches: Batcher, train_step: Callable[[Any, float, int], dict], schedule: Schedule,
            save: Callable[[int, int], None], desc: str, stop: int | None = None) -> LoopResult:
        """train_loop from the resumed step to `stop` (default: opts.steps); `save(step, consumed)`
        writes the trainer's model and state, on the main rank only. Every rank waits for the others at the end."""

        def save_at(at: int) -> None:
            if self.dist.is_main:
                save(at, batches.consumed)

        res = train_loop(step=self.step, steps=stop or self.opts.steps, next_batch=batches.next_batch, train_step=train_step,
                         schedule=schedule, save=save_at, save_every=self.opts.save_every, is_main=self.dist.is_main,
                         log_path=self.out / LOG_FILE, time_limit=self.opts.time_limit, progress=self.opts.progress, desc=desc,
                         batch_size=self.opts.batch_size)
        barrier(self.use_dist)
        return res

    def summary(self, res: LoopResult, batches: Batcher) -> dict:
        """What every trainer reports: the steps, the mean loss of the first step and of the last
        20, the data seen and the seconds; the trainer adds its own lines."""
        losses = res.losses
        return {**self.job.header(), "complete": res.step >= self.opts.steps, "steps": res.step, "target_steps": self.opts.steps,
                "stopped_early": res.stopped_early, "loss_first": round(losses[0], 4) if losses else None,
                "loss_last": round(sum(losses[-20:]) / len(losses[-20:]), 4) if losses else None,
                "epochs_seen": batches.epochs, "rejected": batches.rejected, "seconds": round(res.seconds, 2),
                "startup_seconds": round(res.startup, 2)}

    def plot(self, title: str, ylabel: str) -> Path | None:
        """loss.png from the train log on the main rank, when matplotlib is there (the plot extra):
        a run never fails for want of a chart."""
        from vlmtool.core.plots import plot_train_log

        if not self.dist.is_main:
            return None
        try:
            return plot_train_log(self.out, title, ylabel)
        except UsageError:
            return None


@contextmanager
def train_run(name: str, out: str | Path, opts, refs: list[ShardRef], dist, dev,
              state: Callable[[Path], dict | None]) -> Iterator[TrainRun]:
    """Open a training run: refuse fewer shards than ranks, hold the job folder, join the
    process group under torchrun, and read the state `state(out)` says to resume from."""
    from vlmtool.core.job import Job
    from vlmtool.core.runtime import init_process_group

    check_ranks(refs, dist.world_size)
    with Job(name, out, opts, refs, dist) as job:
        use_dist = init_process_group(dev)
        yield TrainRun(job, opts, Path(out), dist, dev, use_dist, state(Path(out)))
