"""synth against a loopback OpenAI-compatible server with a fixed latency: throughput at
concurrency 32 against serial, as a ratio in one run, and the overhead per request.

    python bench/synth.py [--latency 0.2] [--concurrency 32] [--samples 80]
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "tests"))  # the fake server lives with the tests

import argparse
import runpy
import tempfile
import time

_common = runpy.run_path(os.path.join(_HERE, "_common.py"))
machine, parse = _common["machine"], _common["parse"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--samples", type=int, default=80)
    ap.add_argument("--serial-samples", type=int, default=20)
    a = parse(ap, {"latency": 0.05, "concurrency": 8, "samples": 16, "serial_samples": 4})
    from fake_openai import FakeOpenAI

    from vlmtool.synth.job import SynthOptions, run_synth
    from vlmtool.world import make_world

    with tempfile.TemporaryDirectory() as tmp, FakeOpenAI(latency=a.latency) as srv:
        make_world(f"{tmp}/w", samples=a.samples, shard_size=max(1, a.samples // 4), seed=3, sizes="small")
        make_world(f"{tmp}/ws", samples=a.serial_samples, shard_size=a.serial_samples, seed=4, sizes="small")
        t0 = time.perf_counter()
        s1 = run_synth([f"{tmp}/ws"], f"{tmp}/serial", SynthOptions(teacher="openai", base_url=srv.url, model="fake", concurrency=1,
                                                              tasks="negative", progress=False))
        t_serial = time.perf_counter() - t0
        t0 = time.perf_counter()
        sc = run_synth([f"{tmp}/w"], f"{tmp}/conc", SynthOptions(teacher="openai", base_url=srv.url, model="fake",
                                                           concurrency=a.concurrency, progress=False))
        t_conc = time.perf_counter() - t0
    n1, nc = s1["requests"], sc["requests"]
    r1, rc = n1 / t_serial, nc / t_conc
    print(f"machine: {machine()}")
    print(f"server latency {a.latency * 1000:.0f} ms (loopback, in-process threads)")
    print(f"serial        : {n1:4d} requests in {t_serial:6.2f} s = {r1:7.2f} req/s; overhead {(t_serial / n1 - a.latency) * 1000:.1f} ms/request")
    print(f"concurrency {a.concurrency}: {nc:4d} requests in {t_conc:6.2f} s = {rc:7.2f} req/s (ideal {a.concurrency / a.latency:.0f})")
    print(f"ratio concurrent / serial: {rc / r1:.1f}x")


if __name__ == "__main__":
    main()
