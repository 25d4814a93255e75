"""The demo and clip-train beside a busy process: time against the same run on a quiet machine,
as a ratio, with torch's old fixed thread count (all the CPUs) and with vlmtool's own choice.

    python bench/load.py [--tiny] [--clip-steps 40] [--demo-samples 300 (0: no demo)] [--demo-steps 120]

Each case runs in a fresh process. "busy" starts one process that spins on one core for the
length of the run (what another user's job does on a shared node). "old" pins the thread count
to every CPU (VLMTOOL_THREADS=N: what torch does by default); "auto" lets vlmtool choose from
its budget and the CPUs idle at start. The demo is a reduced one (--demo-samples, steps) so that
the three cases fit in minutes; the ratio is what the issue asks, not the demo's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # keep the stdlib's names first
sys.path.insert(0, _HERE)
from _common import machine, parse, world  # noqa: E402

SPIN = "import time\nend = time.time() + float(__import__('sys').argv[1])\nwhile time.time() < end:\n    pass\n"


def run(args: list[str], threads: str | None, busy: bool, limit: float = 3600) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "VLMTOOL_THREADS")}
    if threads:
        env["VLMTOOL_THREADS"] = threads
    spinner = subprocess.Popen([sys.executable, "-c", SPIN, str(limit)]) if busy else None
    try:
        if spinner:
            time.sleep(1.0)  # the other job is running before ours starts
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "vlmtool", *args], env=env, capture_output=True, text=True, timeout=limit)
        secs = time.perf_counter() - t0
    finally:
        if spinner:
            spinner.kill()
            spinner.wait()
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed: {r.stderr[-800:]}")
    return secs


def cases(name: str, make_args, n_cpu: int) -> dict:
    out = {}
    for label, threads, busy in (("quiet", None, False), ("busy_old", str(n_cpu), True), ("busy_auto", None, True)):
        with tempfile.TemporaryDirectory() as d:
            out[label] = run(make_args(Path(d)), threads, busy)
        print(f"{name}: {label}: {out[label]:.1f} s", file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clip-steps", type=int, default=40)
    ap.add_argument("--demo-samples", type=int, default=300, help="0: leave the demo out")
    ap.add_argument("--demo-steps", type=int, default=120)
    a = parse(ap, {"clip_steps": 2, "demo_samples": 0})
    n_cpu = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as root:
        w = world(root, 400 if a.demo_samples else 64, "small", shard_size=100)
        runs = {"clip-train": cases("clip-train", lambda d: ["clip-train", str(w), "--model", "tiny-rn-clip", "--steps", str(a.clip_steps),
                                                             "--batch-size", "64", "--workers", "0", "--no-progress", "--out",
                                                             str(d / "c")], n_cpu)}
        if a.demo_samples:
            runs["demo (reduced)"] = cases("demo", lambda d: ["demo", "--out", str(d / "demo"), "--samples", str(a.demo_samples),
                                                              "--heldout", "16", "--clip-steps", str(a.demo_steps), "--tune-steps",
                                                              str(a.demo_steps), "--no-progress", "--json"], n_cpu)
    print(f"machine: {machine()}; busy = one process spinning on one core")
    for name, c in runs.items():
        q = c["quiet"]
        print(f"{name}: quiet {q:.1f} s; busy, {n_cpu} threads (the old default) {c['busy_old']:.1f} s = {c['busy_old'] / q:.2f}x quiet "
              f"ratio; busy, vlmtool's choice {c['busy_auto']:.1f} s = {c['busy_auto'] / q:.2f}x quiet ratio")
    print(json.dumps(runs))


if __name__ == "__main__":
    main()
