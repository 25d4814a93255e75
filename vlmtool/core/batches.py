"""The batched map every shard job runs: loader workers -> function on the device -> per-shard sink.

Each DataLoader worker owns whole shards (shard i goes to worker i % workers), reads their
records in order, parses and prepares each sample (decode, resize, tokenize: the CPU work) and
collates batches that never span two shards. A rejected sample travels in its batch as a
reject row, so sinks see every record of a shard in tar order. After a shard's last batch the
worker sends a ShardEnd; the main process then commits that shard's outputs and its completion
record. Because whole shards stay inside one worker, samples of different shards never mix up
(the webdataset multi-worker trap) and a shard is either fully done or redone.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

from vlmtool.core.records import ReadOptions, Reject, iter_samples
from vlmtool.core.runtime import fixed_mmap_threshold
from vlmtool.core.samples import Sample, SampleError
from vlmtool.core.shards import JobDir, ShardRef
from vlmtool.errors import JobFailed

__all__ = ["Batch", "ShardEnd", "Preparer", "Sink", "ReadOptions", "Reject", "ShardStream", "loader", "run_shards", "merge_totals"]


@dataclass(frozen=True)
class Batch:
    """Prepared samples of one shard, in tar order with its rejects. Immutable: a DataLoader
    worker pickles it after it is yielded, so nothing in it may change afterwards."""

    shard: ShardRef
    keys: tuple[str, ...]  # keys of the prepared samples, in order
    data: Any  # what Preparer.collate made of their payloads (None when there are none)
    rejects: tuple[Reject, ...] = ()
    order: tuple[tuple[str, int], ...] = ()  # ("ok", i) / ("reject", j) in tar order

    def __len__(self) -> int:
        return len(self.keys)

    def pin_memory(self) -> Batch:
        """The batch with its tensors in pinned host memory (the DataLoader's pin thread calls
        this with pin_memory=True), so that the copy to a CUDA device can be non-blocking."""
        from dataclasses import replace

        from torch.utils.data._utils.pin_memory import pin_memory

        return replace(self, data=pin_memory(self.data)) if self.data is not None else self


@dataclass
class ShardEnd:
    shard: ShardRef
    samples: int  # records seen
    seconds: float


class Preparer(Protocol):
    """The CPU side of a job, run inside loader workers. Must be picklable."""

    def prepare(self, sample: Sample) -> Any: ...  # may raise SampleError

    def collate(self, payloads: list) -> Any: ...


class Sink(Protocol):
    """The output side of a job for one shard, in the main process."""

    def add(self, batch: Batch, results: Any) -> None: ...

    def commit(self) -> dict: ...  # write outputs atomically; returns extra stats for the record

    def abort(self) -> None: ...


class ShardStream:
    """An iterable of Batch and ShardEnd messages over a list of shards (torch IterableDataset
    protocol: DataLoader workers split it by worker id)."""

    def __init__(self, shards: list[ShardRef], prep: Preparer, batch_size: int, read: ReadOptions, objects_field: str | None = "objects"):
        self.shards = shards
        self.prep = prep
        self.batch_size = batch_size
        self.read = read
        self.objects_field = objects_field

    def __iter__(self) -> Iterator[Batch | ShardEnd]:
        info = None
        if "torch" in sys.modules:  # inside a DataLoader worker torch is loaded; never import it just to ask
            from torch.utils.data import get_worker_info

            info = get_worker_info()
        shards = self.shards if info is None else self.shards[info.id :: info.num_workers]
        for ref in shards:
            yield from self.shard(ref)

    def shard(self, ref: ShardRef) -> Iterator[Batch | ShardEnd]:
        t0 = time.perf_counter()
        seen = 0
        keys: list[str] = []
        payloads: list = []
        rejects: list[Reject] = []
        order: list[tuple[str, int]] = []
        for item in iter_samples(ref, self.read, self.objects_field):
            seen += 1
            if not isinstance(item, Reject):
                try:
                    payload = self.prep.prepare(item)
                except SampleError as e:
                    item = Reject(ref.name, item.key, e.reason, e.detail)
            if isinstance(item, Reject):
                order.append(("reject", len(rejects)))
                rejects.append(item)
            else:
                order.append(("ok", len(keys)))
                keys.append(item.key)
                payloads.append(payload)
            if len(keys) >= self.batch_size:
                yield self._batch(ref, keys, payloads, rejects, order)
                keys, payloads, rejects, order = [], [], [], []  # new lists: the batch keeps its own
        if keys or rejects:
            yield self._batch(ref, keys, payloads, rejects, order)
        yield ShardEnd(ref, seen, time.perf_counter() - t0)

    def _batch(self, ref, keys, payloads, rejects, order) -> Batch:
        return Batch(ref, tuple(keys), self.prep.collate(payloads) if payloads else None, tuple(rejects), tuple(order))


def loader(stream, workers: int, pin_memory: bool = False, prefetch: int = 4, shards: int | None = None) -> Iterator:
    """Iterate `stream` (an iterable that splits itself by DataLoader worker id) in `workers`
    loader processes, at most one per shard, or in this process with workers=0. The one
    DataLoader wrapper of the project."""
    if workers <= 0 or shards == 0:
        yield from stream
        return
    from torch.utils.data import DataLoader, IterableDataset

    class _DS(IterableDataset):
        def __iter__(self):
            return iter(stream)

    import functools
    import os

    yield from DataLoader(_DS(), batch_size=None, num_workers=min(workers, shards or workers), pin_memory=pin_memory,
                          prefetch_factor=prefetch, persistent_workers=False,
                          worker_init_fn=functools.partial(_worker_init, parent=os.getpid()))


def _worker_init(worker_id: int, parent: int | None = None) -> None:
    """Loader workers: die with the process that started them, hold none of its job-folder locks,
    run one thread each at a lower CPU priority than the process that runs the model (so that
    where they share cores the model is never the one kept waiting).

    A worker that outlived a SIGKILLed parent kept the folder lock it inherited and blocked the
    rerun for minutes (writing to a pipe nobody reads): the kernel now kills it with its parent
    (PR_SET_PDEATHSIG), and it closes its copies of the lock descriptors at once."""
    import os

    from vlmtool.core.runtime import release_inherited_locks

    die_with_parent(parent)
    release_inherited_locks()
    try:
        os.nice(int(os.environ.get("VLMTOOL_WORKER_NICE", "10")))
    except (OSError, AttributeError, ValueError):  # pragma: no cover - platforms without nice
        pass
    import torch

    torch.set_num_threads(1)


@dataclass
class RunStats:
    samples: int = 0
    ok: int = 0
    rejected: Counter = field(default_factory=Counter)
    shards_done: int = 0
    shards_skipped: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"shards_done": self.shards_done, "shards_skipped": self.shards_skipped, "samples": self.samples,
                "seconds": round(self.seconds, 3),
                "samples_per_s": round(self.samples / self.seconds, 1) if self.seconds > 0 else None}


@fixed_mmap_threshold()  # memory bounded by the batch, not the number of batches run
def run_shards(
    job: JobDir,
    prep: Preparer,
    open_sink: Callable[[ShardRef], Sink],
    compute: Callable[[Any], Any] | None = None,
    *,
    batch_size: int = 256,
    workers: int = 0,
    strict: bool = False,
    read: ReadOptions | None = None,
    progress: bool = True,
    pin_memory: bool = False,
    desc: str | None = None,
    objects_field: str | None = "objects",
) -> RunStats:
    """Run prep -> compute -> sink over this rank's unfinished shards, writing a completion
    record per shard. `compute(batch.data)` returns per-sample results for the sink (None means
    the collated data itself is the result)."""
    from tqdm import tqdm

    todo = job.pending()
    stats = RunStats(shards_skipped=len(job.mine()) - len(todo))
    stream = ShardStream(todo, prep, batch_size, read or ReadOptions(), objects_field)
    sinks: dict[str, Sink] = {}
    counts: dict[str, tuple[int, Counter, list]] = {}
    bar = tqdm(desc=desc or job.job, unit="sample", file=sys.stderr, disable=not progress or not todo, dynamic_ncols=True, mininterval=0.5)
    t0 = time.perf_counter()
    rejected_total = 0
    try:
        for msg in loader(stream, workers, pin_memory, shards=len(todo)):
            name = msg.shard.name
            if name not in sinks:
                sinks[name] = open_sink(msg.shard)
                counts[name] = (0, Counter(), [])
            ok, rej, rows = counts[name]
            if isinstance(msg, Batch):
                if strict and msg.rejects:
                    r = msg.rejects[0]
                    raise JobFailed(f"--strict: sample {r.key!r} of shard {msg.shard.url} rejected: {r.reason}" + (f" ({r.detail})" if r.detail else ""))
                results = None
                if len(msg):
                    results = compute(msg.data) if compute is not None else msg.data
                sinks[name].add(msg, results)
                for r in msg.rejects:
                    rej[r.reason] += 1
                    rows.append(r.row())
                counts[name] = (ok + len(msg), rej, rows)
                bar.update(len(msg) + len(msg.rejects))
                if msg.rejects:
                    rejected_total += len(msg.rejects)
                    bar.set_postfix(rejected=rejected_total, refresh=False)
            else:
                extra = sinks.pop(name).commit()
                record = {"samples": msg.samples, "ok": ok, "rejected": dict(rej), "rejects": rows,
                          "seconds": round(msg.seconds, 3), **extra}
                job.write_record(msg.shard, record)
                del counts[name]
                stats.samples += msg.samples
                stats.ok += ok
                stats.rejected.update(rej)
                stats.shards_done += 1
    except BaseException:
        for sink in sinks.values():
            sink.abort()
        raise
    finally:
        bar.close()
    stats.seconds = time.perf_counter() - t0
    return stats


def merge_totals(records: dict[str, dict]) -> dict:
    """Samples, ok and rejects by reason over completion records."""
    rejected: Counter = Counter()
    for rec in records.values():
        rejected.update(rec.get("rejected", {}))
    return {
        "shards": len(records),
        "samples": sum(r.get("samples", 0) for r in records.values()),
        "ok": sum(r.get("ok", 0) for r in records.values()),
        "rejected": dict(sorted(rejected.items())),
    }




def die_with_parent(parent: int | None) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux prctl PR_SET_PDEATHSIG);
    exit now if the parent is already gone. Elsewhere a no-op: torch's own worker watchdog stays."""
    import ctypes
    import os
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1: PR_SET_PDEATHSIG (linux/prctl.h)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if parent is not None and os.getppid() != parent:
        os._exit(1)
