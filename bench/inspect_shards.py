"""inspect's throughput against a bare read of the same tar bytes, as a ratio in one run.

    python bench/inspect_shards.py [--samples 10000] [--sizes varied] [--workers 2]
"""

from __future__ import annotations

import os
import sys

# This file is named like the stdlib module `inspect`: keep its folder off the import path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import runpy  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

_common = runpy.run_path(os.path.join(_HERE, "_common.py"))
machine, world, parse = _common["machine"], _common["world"], _common["parse"]


def bare_read(shards: list[Path]) -> tuple[int, float]:
    """Read every member's bytes, group by key: the I/O floor of any job over these shards."""
    t0 = time.perf_counter()
    keys = set()
    for p in shards:
        with tarfile.open(p, "r|") as tf:
            for m in tf:
                f = tf.extractfile(m)
                if f is not None:
                    f.read()
                    keys.add((p, m.name.split(".", 1)[0]))
    return len(keys), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--sizes", default="varied")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "vlmtool-bench"))
    a = parse(ap, {"samples": 40, "sizes": "small", "workers": 1})
    from vlmtool.inspect_shards import InspectOptions, run_inspect

    w = world(a.cache, a.samples, a.sizes)
    shards = sorted(w.glob("*.tar"))
    bare_read(shards)  # warm the page cache so both sides read from memory
    n_bare, t_bare = bare_read(shards)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        s = run_inspect([str(w)], out, InspectOptions(workers=a.workers, batch_size=64, progress=False))
        t_job = time.perf_counter() - t0
    assert s["samples"] == n_bare == a.samples
    job_rate, bare_rate = s["samples"] / t_job, n_bare / t_bare
    print(f"machine: {machine()}")
    print(f"world: {a.samples} samples, sizes={a.sizes}, {len(shards)} shards, {sum(p.stat().st_size for p in shards) / 1e6:.1f} MB")
    print(f"bare tar read        : {bare_rate:10.0f} samples/s")
    print(f"inspect (workers={a.workers}) : {job_rate:10.0f} samples/s  (full decode at JPEG draft scale, process start included)")
    print(f"ratio inspect / bare read: {job_rate / bare_rate:.3f}")


if __name__ == "__main__":
    main()
