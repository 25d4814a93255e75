"""Batch-size backoff on device out-of-memory (asked for by NeMo Curator's users, issue #838).

A `Backoff` runs a job's compute over a batch in chunks of its current size. When the device
runs out of memory, the chunk that failed is retried at half the size, and the smaller size
stays for the rest of that shard (one Backoff per shard): the results are those of a run
started at the smaller batch, byte for byte. Each halving is logged and counted; the count goes
into the shard's completion record and the job's summary. A chunk of one that still does not
fit ends the job with a message.

Tests inject the error on CPU: VLMTOOL_INJECT_OOM=first raises torch.OutOfMemoryError on the
first compute call of every shard (of every training run), once per process.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from vlmtool.errors import JobFailed

ENV = "VLMTOOL_INJECT_OOM"
_injected: set = set()


def is_oom(e: BaseException) -> bool:
    """A device out-of-memory error: torch.OutOfMemoryError (CUDA's, and the CPU caching
    allocator's), or MPS's RuntimeError."""
    import torch

    if isinstance(e, torch.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower() and "MPS" in str(e)


def maybe_inject(key: str) -> None:
    """Raise an out-of-memory error on the first call for `key` when VLMTOOL_INJECT_OOM=first."""
    if os.environ.get(ENV) != "first" or key in _injected:
        return
    import torch

    _injected.add(key)
    raise torch.OutOfMemoryError(f"injected out-of-memory error ({ENV}=first, {key})")


def free_cache() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class Backoff:
    """The batch size of one shard's compute, halved on out-of-memory."""

    def __init__(self, size: int, key: str, what: str = "batch"):
        self.size, self.key, self.what, self.count = max(1, int(size)), key, what, 0

    def attempt(self, n: int, fn: Callable[[], Any]) -> tuple[bool, Any]:
        """(True, fn()) or, after an out-of-memory error on a chunk of n, (False, None) with
        the size halved: the caller retries that chunk at `self.size`."""
        try:
            maybe_inject(self.key)
            return True, fn()
        except Exception as e:  # noqa: BLE001 - only out-of-memory errors are handled; the rest go on up
            if not is_oom(e):
                raise
            if n <= 1:
                raise JobFailed(f"{self.key}: out of device memory with a {self.what} of 1 ({e}); "
                                "use a smaller model, a lower --precision, or another device") from None
            self.size = max(1, self.size // 2)
            while self.size >= n > 1:  # a short last batch: below the size that failed
                self.size //= 2
            self.count += 1
            free_cache()
            from vlmtool.core.job import log

            log(self.key.split(":")[0], f"out of device memory on a {self.what} of {n} ({self.key}): "
                                        f"{self.what} halved to {self.size}")
            return False, None

    def chunks(self, n: int, fn: Callable[[int, int], Any]) -> list:
        """[fn(start, stop), ...] over [0, n) in chunks of the current size, in order; a chunk
        that runs out of memory is retried from its start at half the size."""
        out, at = [], 0
        while at < n:
            stop = min(n, at + self.size)
            ok, res = self.attempt(stop - at, lambda a=at, b=stop: fn(a, b))
            if ok:
                out.append(res)
                at = stop
        return out
