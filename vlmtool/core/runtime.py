"""Where a job runs: rank and world size, device, precision, seeds.

Rank and world come from torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK) or, without them,
from SLURM's (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID); a plain run is rank 0 of 1. torch is
imported only by the functions that need it, so light commands stay fast.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    import torch

from vlmtool.errors import UsageError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "local"  # local | torchrun | slurm

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise UsageError(f"environment variable {name}={env[name]!r} is not an integer") from None


def dist_info(env: Mapping[str, str] | None = None) -> Dist:
    """Rank and world of this process, from torchrun first, then SLURM, else 0 of 1."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        d = Dist(_int(env, "RANK"), _int(env, "WORLD_SIZE"), _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0, "torchrun")
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        d = Dist(
            _int(env, "SLURM_PROCID"),
            _int(env, "SLURM_NTASKS"),
            _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
            "slurm",
        )
    else:
        return Dist()
    if d.world_size < 1 or not 0 <= d.rank < d.world_size:
        raise UsageError(f"rank {d.rank} is outside world size {d.world_size} ({d.launcher} variables)")
    return d


def loader_worker() -> tuple[int, int]:
    """(this DataLoader worker's id, the number of workers), or (0, 1) outside a loader worker.
    Never imports torch just to ask: inside a worker it is loaded already."""
    if "torch" not in sys.modules:
        return 0, 1
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def worker_share(items: list) -> list:
    """This loader worker's part of `items` (item i goes to worker i % workers): whole shards
    each, so samples of different shards never interleave (the webdataset multi-worker trap)."""
    wid, workers = loader_worker()
    return items[wid::workers]


def resolve_device(name: str = "auto", dist: Dist | None = None):
    """A torch.device for `auto|cpu|cuda|mps`; under torchrun each rank takes cuda:LOCAL_RANK."""
    import torch

    if name not in DEVICES and not name.startswith("cuda:"):
        raise UsageError(f"unknown device {name!r}: use one of {', '.join(DEVICES)}")
    dist = dist or dist_info()
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for but torch sees no CUDA device")
        if name == "cuda":
            name = f"cuda:{dist.local_rank % torch.cuda.device_count()}"
        torch.cuda.set_device(torch.device(name))
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps was asked for but MPS is not available")
    configure_threads(dist)
    return torch.device(name)


# ---------------------------------------------------------------------------------- CPU threads

_THREADS: dict = {}


def cpu_budget(env: Mapping[str, str] | None = None, root: str = "/sys/fs/cgroup") -> tuple[int, str]:
    """(CPUs this process is given, what set it): the fewest of its CPU affinity, its cgroup's
    CPU quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us`) and SLURM's `SLURM_CPUS_PER_TASK`."""
    import math

    env = os.environ if env is None else env
    found = [(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1), "affinity")]
    quota = _cgroup_quota(root)
    if quota is not None:
        found.append((max(1, math.ceil(quota)), "cgroup quota"))
    slurm = env.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        found.append((int(slurm), "SLURM_CPUS_PER_TASK"))
    return min(found)


def _cgroup_quota(root: str) -> float | None:
    """CPUs a cgroup quota allows (None: no quota, or no cgroup files)."""
    try:
        quota, period = open(os.path.join(root, "cpu.max")).read().split()[:2]  # v2: "max 100000" or "200000 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(open(os.path.join(root, "cpu", "cpu.cfs_quota_us")).read())
        period = int(open(os.path.join(root, "cpu", "cpu.cfs_period_us")).read())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def idle_cpus(cpus: set[int] | None = None, window: float = 0.25) -> float | None:
    """How many of `cpus` (default: this process's) sat idle over `window` seconds, from
    /proc/stat: what other processes leave to this one. None where /proc/stat is not there."""
    import time

    cpus = cpus if cpus is not None else (os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None)

    def sample() -> dict[int, tuple[int, int]]:
        out = {}
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu") and line[3].isdigit():
                    name, *vals = line.split()
                    v = [int(x) for x in vals]
                    out[int(name[3:])] = (v[3] + (v[4] if len(v) > 4 else 0), sum(v[:8]))  # idle + iowait, total
        return out

    try:
        a = sample()
        time.sleep(window)
        b = sample()
    except (OSError, ValueError, IndexError):
        return None
    idle = 0.0
    for c in b:
        if (cpus is None or c in cpus) and c in a and b[c][1] > a[c][1]:
            idle += (b[c][0] - a[c][0]) / (b[c][1] - a[c][1])
    return idle


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's name ("model name" in /proc/cpuinfo; elsewhere what platform says)."""
    import platform

    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def float_path() -> dict:
    """What decides a CPU run's floating-point results beyond its seed: the CPU, the kernels torch
    dispatches to (its CPU capability: AVX-512 where the CPU has it, else AVX2, or what
    ATEN_CPU_CAPABILITY forces), the torch threads and torch's version. Two runs of one seed agree
    bit for bit only where these agree, and a small model need not learn the same thing on two: the
    demo's seed 1 scored POPE F1 0.84-0.93 on a 2-core Intel Xeon (AVX-512) and 0.47-0.49 on a 2-core
    AMD EPYC (AVX2 only) (docs/benchmarks.md)."""
    import torch

    return {"cpu": cpu_model(), "kernels": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def threads_chosen() -> dict | None:
    """The torch threads this process chose and why ({"count", "reason"}), once chosen."""
    if _THREADS.get("threads") is None:
        return None
    return {"count": _THREADS["threads"], "reason": _THREADS["reason"]}


def configure_threads(dist: Dist | None = None) -> int | None:
    """Set torch's intra-op threads from what this process is given, once per process: the CPU
    budget (affinity, cgroup quota, SLURM) shared by the ranks on this node, and no more than the
    CPUs other processes leave idle right now (measured over a quarter second). OpenMP threads
    that wait at every op's barrier for a core another process holds made clip-train 15x slower
    beside one busy process on 2 cores. An explicit OMP_NUM_THREADS or VLMTOOL_THREADS wins.
    Returns the count set (None: left alone)."""
    import torch

    if "threads" in _THREADS:
        return _THREADS["threads"]
    given = os.environ.get("VLMTOOL_THREADS") or os.environ.get("OMP_NUM_THREADS")
    if given:
        n = int(given) if given.isdigit() and int(given) > 0 else None
        reason = "VLMTOOL_THREADS/OMP_NUM_THREADS"
    else:
        budget, why = cpu_budget()
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)) if dist is not None and dist.world_size > 1 else 1
        share = max(1, budget // local)
        idle = idle_cpus()
        n = share if idle is None else max(1, min(share, int(idle + 0.5)))
        reason = f"{budget} by {why}" + (f", {local} ranks here" if local > 1 else "") + (f", {idle:.1f} idle" if idle is not None else "")
    if n is not None:
        torch.set_num_threads(n)
    _THREADS["threads"] = n
    _THREADS["reason"] = reason
    return n


def resolve_precision(precision: str, device) -> torch.dtype | None:
    """The autocast dtype for a precision name, or None for plain fp32.

    auto means bf16 on a CUDA device that supports it and fp32 elsewhere: on CPUs without native
    bf16, bf16 autocast ran about 7x slower than fp32 where it was measured (a 2-core CPU, no GPU).
    """
    import torch

    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device, dtype):
    """An autocast context for dtype on device, or a no-op for fp32."""
    import torch

    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def precision_name(dtype) -> str:
    return {None: "fp32"}.get(dtype, str(dtype).replace("torch.", "").replace("bfloat16", "bf16").replace("float16", "fp16"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy comes with torch
        pass
    if "torch" in sys.modules:
        import torch

        torch.manual_seed(seed)


def init_process_group(device) -> bool:
    """Join torch.distributed when launched by torchrun with more than one rank.

    Returns True when a process group is (now) initialised. gloo on CPU, nccl on CUDA.
    """
    import torch.distributed as td

    d = dist_info()
    if d.world_size == 1 or d.launcher != "torchrun":
        return False
    if not td.is_initialized():
        td.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def _set_mmap_threshold(nbytes: int) -> bool:
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is not None:
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, nbytes))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


MMAP_THRESHOLD_MAX = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: where the dynamic threshold ends up


@contextlib.contextmanager
def fixed_mmap_threshold(nbytes: int = 128 << 10):
    """Within the block, fix glibc malloc's mmap threshold (M_MMAP_THRESHOLD) at `nbytes`, its
    starting value, so that every allocation above it is mapped and given back when freed. Left
    dynamic, glibc raises the threshold each time a large mapped block is freed (up to 32 MiB),
    after which the per-batch buffers (unpickled batches, activations) come from the heap, which
    fragments and is never returned: the filter's score pass grew by about 9 KB a sample that way
    (measured: RssAnon at each shard's end 605 -> 751 MB over 10 shards, live Python objects
    flat; flat at 503 MB with the threshold fixed). Loader workers forked inside inherit it.

    On leaving, the threshold is set to 32 MiB, the value the dynamic rule climbs to (glibc has no
    way back to the dynamic rule): a training loop run later in the same process (`vlmtool demo`)
    would otherwise map, fault in and unmap every activation of every step, which made its steps
    2.3x slower. A no-op off glibc or when MALLOC_MMAP_THRESHOLD_ is set. Yields whether it was set."""
    was_set = _set_mmap_threshold(nbytes)
    try:
        yield was_set
    finally:
        if was_set:
            _set_mmap_threshold(MMAP_THRESHOLD_MAX)



# ---------------------------------------------------------------------------------- folder locks across fork

_LOCK_FDS: set[int] = set()  # this process's job-folder locks (flock on these descriptors)


def hold_lock_fd(fd: int) -> None:
    _LOCK_FDS.add(fd)


def drop_lock_fd(fd: int) -> None:
    _LOCK_FDS.discard(fd)


def release_inherited_locks() -> None:
    """In a forked child (a loader worker): close the copies of the parent's lock descriptors, so
    that the lock lives exactly as long as the job's own process (flock belongs to the open file,
    which the parent still holds: closing the child's copy leaves the parent's lock in place)."""
    for fd in list(_LOCK_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _LOCK_FDS.clear()
