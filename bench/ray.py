"""The Ray executor's overhead: one job's samples/s under `--executor ray` against the default
executor's, same input, same machine, measured in one run, as a ratio.

    python bench/ray.py --tiny                        # seconds: 240 samples, encode
    python bench/ray.py --job filter --samples 4000   # filter (score + select passes)

Each run is timed end to end as a user sees it (model load, loader or actor start, every
shard, the manifest); Ray itself is started once before both (a cluster is already up when a
job is submitted to it), so its own start is not counted. Default executor: one process with
`--workers` loader workers; Ray: `--ray-workers` actors of one CPU each, `--actor-workers`
loader workers inside each. Random tiny-clip weights, saved to a folder.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse
import runpy
import shutil
import tempfile
import time
from pathlib import Path

_common = runpy.run_path(os.path.join(_HERE, "_common.py"))
machine, world = _common["machine"], _common["world"]


def _tower(arch: str) -> str:
    import torch

    from vlmtool.clip.model import load_clip
    from vlmtool.clip.train import save_model

    torch.manual_seed(0)
    loaded = load_clip(arch, "random")
    folder = tempfile.mkdtemp(prefix="bench-ray-tower-")
    save_model(Path(folder), loaded.model, loaded, 0, {"bench": True})
    return folder


def _run(job: str, inputs: list[str], out: str, tower: str, extra: dict) -> tuple[float, int]:
    """(seconds, samples) of one run of `job` into a fresh `out`."""
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    if job == "encode":
        from vlmtool.encode import EncodeOptions, run_encode

        s = run_encode(inputs, out, EncodeOptions(pretrained=tower, progress=False, **extra))
    elif job == "filter":
        from vlmtool.filter import FilterOptions, run_filter

        s = run_filter(inputs, out, FilterOptions(pretrained=tower, keep_fraction=0.5, progress=False, **extra))
    else:
        from vlmtool.inspect_shards import InspectOptions, run_inspect

        s = run_inspect(inputs, out, InspectOptions(progress=False, **extra))
    assert s["complete"], s
    return time.perf_counter() - t0, s["samples"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", default="encode", choices=("encode", "filter", "inspect"))
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--shard-size", type=int, default=200)
    ap.add_argument("--model", default="tiny-clip")
    ap.add_argument("--workers", type=int, default=1, help="loader workers of the default executor")
    ap.add_argument("--ray-workers", type=int, default=2)
    ap.add_argument("--actor-workers", type=int, default=0, help="loader workers inside each actor")
    ap.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "vlmtool-bench"))
    ap.add_argument("--tiny", action="store_true", help="240 samples in 6 shards: a check that it runs")
    a = ap.parse_args()
    if a.tiny:
        a.samples, a.shard_size = 240, 40
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    w = world(a.root, a.samples, "varied", shard_size=a.shard_size)
    inputs = sorted(str(p) for p in w.glob("*.tar"))
    tower = _tower(a.model)
    out = tempfile.mkdtemp(prefix="bench-ray-")
    try:
        t_local, n = _run(a.job, inputs, out + "/local", tower, {"workers": a.workers})
        t_ray, n_ray = _run(a.job, inputs, out + "/ray", tower, {"executor": "ray", "ray_workers": a.ray_workers,
                                                                 "workers": a.actor_workers})
    finally:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(tower, ignore_errors=True)
        ray.shutdown()
    assert n == n_ray
    local, on_ray = n / t_local, n / t_ray
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f} at the end")
    print(f"{a.job}, {a.model}, {n} samples in {len(inputs)} shards")
    print(f"default executor ({a.workers} loader workers): {local:,.1f} samples/s ({t_local:.1f} s)")
    print(f"ray ({a.ray_workers} actors x {a.actor_workers} loader workers): {on_ray:,.1f} samples/s ({t_ray:.1f} s)")
    print(f"ratio ray / default: {on_ray / local:.2f}")


if __name__ == "__main__":
    main()
