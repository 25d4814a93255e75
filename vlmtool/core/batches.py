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
from vlmtool.core.runtime import fixed_mmap_threshold, worker_share
from vlmtool.core.samples import Sample, SampleError
from vlmtool.core.shards import JobDir, ShardRef

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
    """The CPU side of a job, run inside loader workers. Must be picklable.

    Two optional methods change what ShardStream reads and how it cuts batches:
    `records(ref, read, objects_field)` yields a shard's items and Rejects in tar order (default:
    the core's sample stream, `iter_samples`), and `size(payload)` is what a payload counts
    towards the batch size (default 1; encode counts views)."""

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
        for ref in worker_share(self.shards):
            yield from self.shard(ref)

    def _items(self, ref: ShardRef) -> Iterator:
        records = getattr(self.prep, "records", None)
        return records(ref, self.read, self.objects_field) if records else iter_samples(ref, self.read, self.objects_field)

    def shard(self, ref: ShardRef) -> Iterator[Batch | ShardEnd]:
        t0 = time.perf_counter()
        seen = filled = 0
        size = getattr(self.prep, "size", None)
        keys: list[str] = []
        payloads: list = []
        rejects: list[Reject] = []
        order: list[tuple[str, int]] = []
        for item in self._items(ref):
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
                filled += size(payload) if size else 1
            if filled >= self.batch_size:
                yield self._batch(ref, keys, payloads, rejects, order)
                keys, payloads, rejects, order, filled = [], [], [], [], 0  # new lists: the batch keeps its own
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

    def add(self, record: dict) -> None:
        """Count one finished shard, from its completion record (or the stats a Ray actor returns)."""
        self.samples += record.get("samples", 0)
        self.ok += record.get("ok", 0)
        self.rejected.update(record.get("rejected", {}))
        self.shards_done += 1

    def to_json(self) -> dict:
        return {"shards_done": self.shards_done, "shards_skipped": self.shards_skipped, "samples": self.samples,
                "seconds": round(self.seconds, 3),
                "samples_per_s": round(self.samples / self.seconds, 1) if self.seconds > 0 else None}


class _InFlight:
    """One shard between its first batch and its ShardEnd: its sink and what its batches held."""

    def __init__(self, sink: Sink):
        self.sink, self.ok, self.rejected, self.rows = sink, 0, Counter(), []

    def add(self, batch: Batch, compute: Callable[[Any], Any] | None) -> None:
        results = None
        if len(batch):
            results = compute(batch.data) if compute is not None else batch.data
        self.sink.add(batch, results)
        for r in batch.rejects:
            self.rejected[r.reason] += 1
            self.rows.append(r.row())
        self.ok += len(batch)

    def record(self, end: ShardEnd) -> dict:
        """Commit the sink; the shard's completion record (the sink's own counts win)."""
        extra = self.sink.commit()
        return {"samples": end.samples, "ok": self.ok, "rejected": dict(self.rejected), "rejects": self.rows,
                "seconds": round(end.seconds, 3), **extra}


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
    the collated data itself is the result). With --strict the first reject stops the job."""
    from tqdm import tqdm

    todo = job.pending()
    stats = RunStats(shards_skipped=len(job.mine()) - len(todo))
    stream = ShardStream(todo, prep, batch_size, read or ReadOptions(), objects_field)
    shards: dict[str, _InFlight] = {}
    bar = tqdm(desc=desc or job.job, unit="sample", file=sys.stderr, disable=not progress or not todo, dynamic_ncols=True, mininterval=0.5)
    t0 = time.perf_counter()
    rejected_total = 0
    try:
        for msg in loader(stream, workers, pin_memory, shards=len(todo)):
            name = msg.shard.name
            if name not in shards:
                shards[name] = _InFlight(open_sink(msg.shard))
            if isinstance(msg, Batch):
                if strict and msg.rejects:
                    raise msg.rejects[0].strict_error(msg.shard.url)
                shards[name].add(msg, compute)
                bar.update(len(msg) + len(msg.rejects))
                if msg.rejects:
                    rejected_total += len(msg.rejects)
                    bar.set_postfix(rejected=rejected_total, refresh=False)
            else:
                record = shards.pop(name).record(msg)
                job.write_record(msg.shard, record)
                stats.add(record)
    except BaseException:
        for shard in shards.values():
            shard.sink.abort()
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
