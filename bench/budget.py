"""Header-only budgeting against fully decoding the same images, as a ratio in one run; and a
quick estimate (`vlmtool budget --size`) against a bare Python start, the floor of any command.

    python bench/budget.py [--samples 10000] [--sizes varied] [--model llava-next,qwen2-vl]
"""

from __future__ import annotations

import os
import sys

# bench/inspect.py is named like the stdlib module: keep this folder off the import path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import io  # noqa: E402
import runpy  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

_common = runpy.run_path(os.path.join(_HERE, "_common.py"))
machine, world, parse = _common["machine"], _common["world"], _common["parse"]


def decode_all(shards: list[Path]) -> int:
    """Read each image member and decode its pixels (what a naive counter does to get sizes)."""
    from PIL import Image

    n = 0
    for p in shards:
        with tarfile.open(p, "r:") as tf:
            for m in tf:
                if m.isfile() and m.name.endswith(".jpg"):
                    im = Image.open(io.BytesIO(tf.extractfile(m).read()))
                    im.load()
                    n += 1
    return n


def quick_estimate(runs: int = 5) -> tuple[float, float]:
    """Median seconds of `vlmtool budget --size 1920x1080 -m qwen2-vl,llava-next --json` as a new
    process, and of `python -c pass` (the interpreter's own start)."""
    import statistics
    import subprocess

    def median(cmd: list[str]) -> float:
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    quick = median([sys.executable, "-m", "vlmtool", "budget", "--size", "1920x1080", "-m", "qwen2-vl,llava-next", "--json"])
    return quick, median([sys.executable, "-c", "pass"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--sizes", default="varied")
    ap.add_argument("--model", default="llava-next,qwen2-vl")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "vlmtool-bench"))
    a = parse(ap, {"samples": 40, "sizes": "small"})
    from vlmtool.budget.dataset import budget_dataset

    w = world(a.cache, a.samples, a.sizes)
    shards = sorted(w.glob("*.tar"))
    presets = a.model.split(",")
    budget_dataset([str(w)], presets, {}, progress=False)  # warm the page cache
    t0 = time.perf_counter()
    s = budget_dataset([str(w)], presets, {}, progress=False)
    t_budget = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_dec = decode_all(shards)
    t_dec = time.perf_counter() - t0
    n = s["items"]
    assert n == n_dec == a.samples, (n, n_dec)
    print(f"machine: {machine()}")
    print(f"world: {a.samples} images, sizes={a.sizes}, {len(shards)} shards")
    print(f"budget ({len(presets)} presets, header only): {n / t_budget:10.0f} images/s")
    print(f"full decode                    : {n_dec / t_dec:10.0f} images/s")
    print(f"ratio header-only / decode: {(n / t_budget) / (n_dec / t_dec):.1f}x")
    quick, bare = quick_estimate()
    print(f"quick estimate (--size, 2 presets, new process): {quick:.3f} s; bare python start {bare:.3f} s; ratio {quick / bare:.1f}x")


if __name__ == "__main__":
    main()
