"""Where a job's shards run: `local` (the default: this process, or this rank of a torchrun or
SLURM launch, see core/batches.py) or `ray` (a pool of Ray actors fed by one driver).

Under Ray the driver holds the job folder (lock, settings, completion records, manifest) and
hands each unfinished shard to an actor as one unit of work. An actor builds the job's worker
once (`setup`: the model, the loader's preparer) and runs shard after shard (`run`), committing
each exactly as a rank does: outputs under their final names, then the shard's completion
record. An actor never takes the folder lock. When an actor dies, Ray restarts it and retries
its shard (`max_restarts`, `max_task_retries`); since a shard's outputs appear only complete
and its record last, redoing a half-done shard is safe, and a rerun skips what is recorded.

A job supplies a worker: a picklable object with

    setup() -> dict                   # load what every shard needs; a description for the driver
    run(ref, arg) -> dict             # one shard, committed; its stats {"samples", "ok", "rejected"}
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from vlmtool.core.batches import RunStats
from vlmtool.core.options import option
from vlmtool.core.shards import ShardRef, temp_pattern
from vlmtool.errors import JobFailed, UsageError, VlmtoolError

EXECUTORS = ("local", "ray")
RAY_EXTRA = "pip install 'vlmtool[ray]'"
MAX_RESTARTS = 4  # an actor (and the shard it held) is retried this often before the job fails


@dataclass(frozen=True, kw_only=True)
class ExecutorOptions:
    """The options every shard job shares for where its shards run (all free: a job started on
    one executor may be resumed on the other)."""

    executor: str = option("local", "local (this process, or the torchrun/SLURM ranks) or ray (a pool of Ray actors; "
                           "pip install 'vlmtool[ray]').", free=True)
    ray_address: str = option("auto", "The Ray cluster (auto: RAY_ADDRESS or the cluster on this machine, "
                              "else a local Ray started for the job).", free=True)
    ray_workers: int = option(1, "Ray actors, each loading the model once and taking shard after shard "
                              "(--workers stays the loader processes inside each).", min=1, free=True)
    gpus_per_worker: float = option(0.0, "GPUs per Ray actor; a fraction (0.25) shares one GPU between several actors.", min=0.0,
                                    free=True)
    cpus_per_worker: float = option(1.0, "CPUs Ray reserves per actor (count its loader workers).", min=0.0, free=True)


def uses_ray(opts) -> bool:
    """Whether `opts` asks for Ray; a UsageError when it cannot be had."""
    name = getattr(opts, "executor", "local")
    if name not in EXECUTORS:
        raise UsageError(f"--executor {name!r}: choose one of {', '.join(EXECUTORS)}")
    if name == "local":
        return False
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UsageError(f"--executor ray needs Ray: {RAY_EXTRA}") from None
    from vlmtool.core.runtime import dist_info

    if dist_info().world_size > 1:
        raise UsageError("--executor ray runs from one driver process: launch it without torchrun or srun")
    if opts.ray_workers < 1 or opts.gpus_per_worker < 0 or opts.cpus_per_worker <= 0:
        raise UsageError("--ray-workers must be at least 1, --gpus-per-worker at least 0, --cpus-per-worker above 0")
    return True


class ShardWorker(Protocol):
    def setup(self) -> dict: ...

    def run(self, ref: ShardRef, arg: Any) -> dict: ...


class ShardActor:
    """The Ray actor around a job's worker: set up once, then one shard per call."""

    def __init__(self, worker: ShardWorker):
        self.worker = worker
        self.desc = worker.setup()

    def describe(self) -> dict:
        return self.desc

    def pid(self) -> int:
        return os.getpid()

    def run(self, ref: ShardRef, arg: Any) -> dict:
        return self.worker.run(ref, arg)


def connect(address: str):
    """Ray, connected: the cluster at `address`, or with `auto` the one this machine or
    RAY_ADDRESS names, else a local Ray started for this job (it stops when this process
    ends: Ray's own exit hook; a job's passes share it)."""
    import ray

    if ray.is_initialized():
        return ray
    if address != "auto" or os.environ.get("RAY_ADDRESS"):
        ray.init(address=None if address == "auto" else address, configure_logging=False)
        return ray
    try:  # a cluster already running on this machine (`ray start --head`)
        ray.init(address="auto", configure_logging=False)
    except ConnectionError:  # none: a Ray of this job's own, on the loopback address only
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, configure_logging=False)
    return ray


class PoolStats(RunStats):
    """What one pass of shards did, as run_shards' RunStats reports it, summed shard by shard
    from the records the actors return (RunStats.add)."""


class RayPool:
    """`workers` actors, each holding one set-up worker, fed one shard at a time by the driver."""

    def __init__(self, opts, worker: ShardWorker, workers: int | None = None, gpus: float | None = None):
        self.ray = connect(opts.ray_address)
        actor = self.ray.remote(ShardActor)
        n = workers or opts.ray_workers
        res = {"num_cpus": opts.cpus_per_worker, "num_gpus": opts.gpus_per_worker if gpus is None else gpus}
        self.actors = [actor.options(max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS, **res).remote(worker)
                       for _ in range(n)]

    def describe(self) -> dict:
        return self.result(self.actors[0].describe.remote())

    def result(self, fut):
        try:
            return self.ray.get(fut)
        except self.ray.exceptions.RayTaskError as e:  # the worker raised: a user error travels as itself
            if isinstance(e.cause, VlmtoolError):
                raise e.cause from None
            raise
        except self.ray.exceptions.RayActorError as e:
            raise JobFailed(f"a Ray worker died {MAX_RESTARTS + 1} times ({e.__class__.__name__}); "
                            "rerun the job with the same --out to finish the shards left") from None

    def map(self, items: Iterable[tuple[ShardRef, Any]], done: Callable[[ShardRef, dict], None]) -> None:
        """Run every (shard, arg) on the actors, one shard per actor at a time; `done(ref, stats)`
        on the driver as each one is committed."""
        queue = deque(items)
        running: dict = {}

        def submit(actor) -> None:
            if queue:
                ref, arg = queue.popleft()
                running[actor.run.remote(ref, arg)] = (actor, ref)

        for a in self.actors:
            submit(a)
        while running:
            ready, _ = self.ray.wait(list(running), num_returns=1)
            actor, ref = running.pop(ready[0])
            done(ref, self.result(ready[0]))
            submit(actor)

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []


def run_pool(opts, out: Path, worker: ShardWorker, items: list[tuple[ShardRef, Any]], *, skipped: int = 0, desc: str = "",
             progress: bool = True, gpus: float | None = None, workers: int | None = None) -> tuple[PoolStats, dict]:
    """Run `items` (shard, arg) through a pool of Ray actors holding `worker`: one bar on the
    driver over every shard (samples/s across the cluster). Returns (stats, the worker's setup
    description, or {} when nothing was left to do)."""
    from tqdm import tqdm

    stats = PoolStats(shards_skipped=skipped)
    if not items:
        return stats, {}
    t0 = time.perf_counter()
    pool = RayPool(opts, worker, min(workers or opts.ray_workers, len(items)), gpus)
    bar = tqdm(desc=desc, unit="sample", file=sys.stderr, disable=not progress, dynamic_ncols=True, mininterval=0.5)

    def done(ref: ShardRef, st: dict) -> None:
        stats.add(st)
        bar.update(st.get("samples", 0))
        bar.set_postfix(shards=f"{stats.shards_done}/{len(items)}", refresh=False)

    try:
        about = pool.describe()
        pool.map(items, done)
    finally:
        bar.close()
        pool.close()
    remove_actor_temps(out)
    stats.seconds = time.perf_counter() - t0
    return stats, about


def run_records(opts, records, worker: ShardWorker, desc: str, *, args: dict | None = None, **kw) -> tuple[PoolStats, dict]:
    """run_pool over the unfinished shards of one pass (`records`, a JobDir); `args` gives each
    shard's argument by name."""
    todo = records.pending()
    items = [(r, None if args is None else args[r.name]) for r in todo]
    return run_pool(opts, records.out, worker, items, skipped=len(records.mine()) - len(todo), desc=desc, **kw)


def shard_records(out, job: str, ref: ShardRef, stage: str | None = None):
    """The completion records of one shard, as an actor sees them (rank 0 of 1: it is handed
    the shard, it does not pick it)."""
    from vlmtool.core.runtime import Dist
    from vlmtool.core.shards import JobDir

    return JobDir(out, job, [ref], Dist(), stage=stage)


def record_stats(records, ref: ShardRef) -> dict:
    """A committed shard's stats from its completion record (the same whether this call wrote
    it or a retried one found it written)."""
    from vlmtool.core.shards import read_json

    rec = read_json(records.record_path(ref))
    return {"samples": rec.get("samples", 0), "ok": rec.get("ok", 0), "rejected": rec.get("rejected", {})}


def run_one(opts, out: Path, worker: ShardWorker, *, desc: str, total: int, poll: Callable[[], int], progress: bool = True,
            arg: Any = None) -> Any:
    """One unit of work on one actor (synth: every request through one holder of the rate
    limits); while it runs, a bar of `poll()` shards done out of `total`."""
    from tqdm import tqdm

    pool = RayPool(opts, worker, 1)
    bar = tqdm(total=total, desc=desc, unit="shard", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    try:
        fut = pool.actors[0].run.remote(None, arg)
        while not pool.ray.wait([fut], timeout=1.0)[0]:
            bar.update(poll() - bar.n)
        result = pool.result(fut)
        bar.update(poll() - bar.n)
    finally:
        bar.close()
        pool.close()
    remove_actor_temps(out)
    return result


def remove_actor_temps(out: Path) -> None:
    """Temporary files of actors killed mid-shard (their shards were redone; no actor is left
    to write): the driver's folder then holds what an undisturbed run's holds."""
    for p in Path(out).rglob(temp_pattern(0)):
        p.unlink(missing_ok=True)


def run_here(worker: ShardWorker, items: list[tuple[ShardRef, Any]]) -> tuple[PoolStats, dict]:
    """The same per-shard work in this process, one shard after another (the reference the Ray
    path is compared against, and a way to debug a worker without Ray)."""
    t0 = time.perf_counter()
    stats = PoolStats()
    about = worker.setup() if items else {}
    for ref, arg in items:
        stats.add(worker.run(ref, arg))
    stats.seconds = time.perf_counter() - t0
    return stats, about
