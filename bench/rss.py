"""Peak memory (RSS) of each job on the hostile corpus (with a huge caption) and on worlds of
growing size: bounded memory means the peak stays flat as the input grows.

    python bench/rss.py --huge-caption-mb 300 --sizes 2000,20000,100000
    python bench/rss.py --jobs synth,export --skip-corpus --sizes 250,12500   # export: 1,000 and 50,000 rows

Each job runs as its own process (`python -m vlmtool ...`); its peak RSS, children included, is
read from the kernel (getrusage RUSAGE_CHILDREN of a fresh waiter process).
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # bench/inspect.py must not shadow the stdlib

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
import runpy  # noqa: E402

parse = runpy.run_path(os.path.join(_HERE, "_common.py"))["parse"]

WAITER = """
import resource, subprocess, sys
p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
sys.stderr.write(p.stderr.decode()[-2000:] if p.returncode else "")
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.returncode)
"""


def peak_mb(args: list[str]) -> tuple[float, int]:
    """Peak RSS in MB of `python -m vlmtool ARGS` (the largest of its processes) and its exit code."""
    out = subprocess.run([sys.executable, "-c", WAITER, sys.executable, "-m", "vlmtool", *args], capture_output=True, text=True)
    kb, rc = out.stdout.split()
    return int(kb) / 1024, int(rc)


def jobs(data: Path, tmp: Path, model: Path, only: set[str] | None = None) -> dict[str, list[str]]:
    """Each job's arguments; export reads what synth wrote just before it (4 rows a sample)."""
    every = {
        "inspect": ["inspect", str(data), "--out", str(tmp / "inspect"), "--no-progress"],
        "filter": ["filter", str(data), "--out", str(tmp / "filter"), "--pretrained", str(model), "--min-score", "0", "--no-progress"],
        "synth": ["synth", str(data), "--out", str(tmp / "synth"), "--teacher", "captions", "--no-progress"],
        "budget": ["budget", str(data), "-m", "llava-1.5,qwen2-vl", "--json", "--no-progress"],
        "export": ["export", str(tmp / "synth" / "instructions.jsonl"), "--shards", str(data), "--to", "hf", "--out", str(tmp / "export"),
                   "--no-progress"],
    }
    return {k: v for k, v in every.items() if only is None or k in only}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--huge-caption-mb", type=int, default=300)
    ap.add_argument("--sizes", default="2000,20000")
    ap.add_argument("--jobs", default="inspect,filter,synth,budget,export", help="which jobs to measure (export needs synth)")
    ap.add_argument("--skip-corpus", action="store_true", help="only the worlds of growing size")
    a = parse(ap, {"huge_caption_mb": 1, "sizes": "20,60", "jobs": "budget", "skip_corpus": True})
    only = set(a.jobs.split(","))
    from vlmtool.world import make_faults, make_world

    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="vlmtool-rss-") as t:
        tmp = Path(t)
        model = tmp / "clip"
        if "filter" in only:
            subprocess.run([sys.executable, "-m", "vlmtool", "clip-train", str(Path(__file__).parent.parent / "fixtures" / "shapes"),
                            "--out", str(model), "--steps", "1", "--batch-size", "8", "--workers", "0", "--no-progress"], check=True,
                           capture_output=True)
        if not a.skip_corpus:
            make_faults(tmp / "corpus", huge_caption_bytes=a.huge_caption_mb << 20)
            results["corpus"] = {name: peak_mb(args) for name, args in jobs(tmp / "corpus", tmp / "c", model, only).items()}
        for n in (int(x) for x in a.sizes.split(",")):
            make_world(tmp / f"w{n}", samples=n, shard_size=1000, seed=n, sizes="small", progress=False)
            results[f"world_{n}"] = {name: peak_mb(args) for name, args in jobs(tmp / f"w{n}", tmp / f"r{n}", model, only).items()}
            manifest = tmp / f"r{n}" / "export" / "manifest.json"
            if manifest.exists():  # what the export's peak was for: its rows
                results[f"world_{n}"]["export_rows"] = (json.loads(manifest.read_text())["totals"]["rows"], 0)
    print(json.dumps(results, indent=1))
    for where, row in results.items():
        print(f"{where:>12}: " + "  ".join(f"{k} {mb:.0f}" + ("" if k.endswith("_rows") else f" MB (exit {rc})")
                                                        for k, (mb, rc) in row.items()), file=sys.stderr)
    worlds = [r for w, r in results.items() if w.startswith("world_")]
    for job in (worlds[0] if len(worlds) > 1 else {}):
        if not job.endswith("_rows"):
            print(f"{job}: peak RSS on the largest world / the smallest: ratio {worlds[-1][job][0] / worlds[0][job][0]:.2f}x")


if __name__ == "__main__":
    main()
