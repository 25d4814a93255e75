"""`vlmtool demo`: every stage that exists, in order, on a freshly made shapes world."""

from __future__ import annotations

import sys
import time
from pathlib import Path


def _log(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr)


def run_demo(out: str, samples: int = 256, progress: bool = True) -> dict:
    from vlmtool.inspect_shards import run_inspect
    from vlmtool.world import make_world

    out_p = Path(out)
    t0 = time.perf_counter()
    steps: dict[str, dict] = {}
    world_dir = out_p / "world"
    if not (world_dir / "world.json").exists():
        _log(f"making a shapes world of {samples} samples in {world_dir}")
        make_world(world_dir, samples=samples, shard_size=max(16, samples // 8), seed=0, mismatch=0.3, broken=0.03,
                   videos=2, progress=progress)
    steps["world"] = {"dir": str(world_dir)}
    _log("inspecting it")
    ins = run_inspect([str(world_dir)], str(out_p / "inspect"), workers=2, progress=progress)
    steps["inspect"] = {k: ins[k] for k in ("samples", "ok", "rejected")}
    return {"demo": str(out_p), "steps": steps, "seconds": round(time.perf_counter() - t0, 2)}
