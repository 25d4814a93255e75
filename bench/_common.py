"""Shared bits of the benchmarks: a cached shapes world and the machine description."""

from __future__ import annotations

import os
from pathlib import Path


def world(root: str, samples: int, sizes: str, shard_size: int = 1000, **kw) -> Path:
    from vlmtool.world import make_world

    out = Path(root) / f"world-{samples}-{sizes}-{shard_size}"
    if not (out / "world.json").exists():
        make_world(out, samples=samples, shard_size=shard_size, seed=0, sizes=sizes, progress=True, **kw)
    return out


def machine() -> str:
    from vlmtool.core.runtime import cpu_model

    cpu = cpu_model()
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = ", " + torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} cores{gpu}"


def parse(ap, tiny: dict):
    """Parse a bench's arguments; with --tiny, the toy sizes in `tiny` (seconds, not minutes: what
    CI runs to check the plumbing and the printed ratio, not the figures)."""
    ap.add_argument("--tiny", action="store_true", help="toy sizes, seconds: checks the plumbing (CI), not the figures")
    a = ap.parse_args()
    if a.tiny:
        for k, v in tiny.items():
            setattr(a, k, v)
    return a
