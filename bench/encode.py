"""encode's throughput against its bound, measured in one run.

    python bench/encode.py --model tiny-clip --samples 1000
    python bench/encode.py --model ViT-B-32 --samples 200 --batch-size 32

(a) the tower alone on ready tensors (forward_intermediates to the chosen layer, same batch of
    views, same precision);
(b) decoding, views and preprocessing alone (open_clip's transform), the job's own loader and
    workers, no model;
(c) `vlmtool encode` end to end: samples/s and MB/s written;
(d) reading the feature shards back with `vlmtool.features.read` (float16 .npy members).
Bound: min(a, b) when the tower has its own device, else the serial sum 1/(1/a + 1/b), since
both share the CPU cores. Random weights (saved to a folder, so the job loads the same tower).
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse
import runpy
import tempfile
import time
from pathlib import Path

_common = runpy.run_path(os.path.join(_HERE, "_common.py"))
machine, world, parse = _common["machine"], _common["world"], _common["parse"]


def _tower(a, dev):
    import torch

    from vlmtool.clip.model import load_clip
    from vlmtool.clip.train import save_model

    torch.manual_seed(0)
    loaded = load_clip(a.model, "random", device=dev)
    folder = tempfile.mkdtemp(prefix="bench-encode-")
    save_model(Path(folder), loaded.model, loaded, 0, {"bench": True})
    return loaded, folder


def _model_alone(loaded, opts, dev, dtype, views: int) -> float:
    """Seconds per view of the tower on ready tensors (median of three)."""
    import torch

    from vlmtool.encode.job import _encoder

    S, B = loaded.preprocess.size, opts.batch_size
    forward = _encoder(loaded, opts, dev, dtype)
    x = torch.randn(B, 3, S, S)  # [B, 3, S, S]
    forward(x)
    reps = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(max(1, views // B)):
            forward(x)
        reps.append((time.perf_counter() - t0) / (max(1, views // B) * B))
    return sorted(reps)[1]


def _prep_alone(loaded, opts, tower, shards, workers: int) -> tuple[float, int]:
    """Seconds per view of reading, decoding, cutting views and preprocessing; and the views."""
    from vlmtool.core.batches import ShardStream, loader
    from vlmtool.core.shards import shard_refs
    from vlmtool.encode.stream import EncodePrep

    prep = EncodePrep(tower, loaded.transform, opts.max_pixels)
    t0 = time.perf_counter()
    views = 0
    for msg in loader(ShardStream(shard_refs(shards), prep, opts.batch_size, opts.read()), workers, shards=len(shards)):
        if getattr(msg, "data", None) is not None:
            views += len(msg.data[0])
    return (time.perf_counter() - t0) / views, views


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="tiny-clip")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--sizes", default="varied")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--anyres", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "vlmtool-bench"))
    a = parse(ap, {"samples": 24, "sizes": "small", "batch_size": 8, "workers": 1})

    from vlmtool.core.runtime import resolve_device, resolve_precision
    from vlmtool.encode import EncodeOptions, run_encode
    from vlmtool.encode.job import tower_of
    from vlmtool.features import feature_shards, read

    w = world(a.cache, a.samples, a.sizes, shard_size=max(50, a.samples // 8))
    shards = sorted(str(p) for p in w.glob("*.tar"))
    dev = resolve_device(a.device)
    dtype = resolve_precision(a.precision, dev)
    loaded, folder = _tower(a, dev)
    opts = EncodeOptions(pretrained=folder, anyres=a.anyres, batch_size=a.batch_size, workers=a.workers, device=a.device,
                         precision=a.precision, progress=False)
    tower, _ = tower_of(loaded, opts)

    t_b, views = _prep_alone(loaded, opts, tower, shards, a.workers)
    t_a = _model_alone(loaded, opts, dev, dtype, views)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        s = run_encode([str(w)], tmp + "/f", opts)
        t_c = time.perf_counter() - t0
        t0 = time.perf_counter()
        n_read = sum(1 for _ in read(feature_shards([tmp + "/f"])))
        t_d = time.perf_counter() - t0

    per_sample = views / s["ok"]
    shared = dev.type == "cpu"
    bound_views = 1.0 / (t_a + t_b) if shared else min(1 / t_a, 1 / t_b)
    bound = bound_views / per_sample
    rate = s["samples"] / t_c
    print(f"machine: {machine()} (shared with other jobs: load average {os.getloadavg()[0]:.1f})")
    print(f"tower: {a.model} (random weights), {tower.size} px / {tower.patch} px patches, layer {opts.layer}, "
          f"batch {a.batch_size} views, device {dev}, precision {dtype or 'fp32'}, workers {a.workers}")
    print(f"world: {s['samples']} samples, sizes={a.sizes}, {len(shards)} shards, {views} views ({per_sample:.2f} a sample)")
    print(f"(a) tower alone             : {1 / t_a:9.1f} views/s")
    print(f"(b) decode+views+preprocess : {1 / t_b:9.1f} views/s")
    print(f"    bound ({'serial sum, shared CPU' if shared else 'slower of a, b'}): {bound:9.1f} samples/s")
    print(f"(c) encode end to end       : {rate:9.1f} samples/s, {s['bytes'] / t_c / 1e6:7.2f} MB/s written "
          f"-> ratio {rate / bound:.2f} of the bound ({t_c:.1f} s with the model load and the plan)")
    loop = s["this_run"]["samples_per_s"]
    print(f"    the shard loop alone    : {loop:9.1f} samples/s -> {loop / bound:.2f} of the bound (without the model load and the plan)")
    print(f"(d) read back (features.read): {n_read / t_d:9.1f} samples/s, {s['bytes'] / t_d / 1e6:7.1f} MB/s")


if __name__ == "__main__":
    main()
