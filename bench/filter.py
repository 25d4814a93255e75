"""filter's throughput against its bound and against a naive loop, measured in one run.

    python bench/filter.py --model tiny-clip --pretrained DIR --samples 2000
    python bench/filter.py --model ViT-B-32 --samples 400 --batch-size 64

(a) the model alone on ready tensors (same model, batch size, precision);
(b) decoding and preprocessing alone, same loader workers, no model;
(c) `vlmtool filter` end to end (score and select passes);
(d) a naive loop: open, open_clip's transform, encode one pair at a time.
Bound: min(a, b) when the model has its own device, else the serial sum 1/(1/a + 1/b), since
both share the CPU cores. Also: fast preprocessing against open_clip's transform in one
process (per core), and the score deviation between the two over the benchmark set.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import runpy  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

_common = runpy.run_path(os.path.join(_HERE, "_common.py"))
machine, world, parse = _common["machine"], _common["world"], _common["parse"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="tiny-clip")
    ap.add_argument("--pretrained", default=None, help="a clip-train folder (random weights otherwise)")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--sizes", default="varied")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "vlmtool-bench"))
    a = parse(ap, {"samples": 24, "sizes": "small", "batch_size": 8, "workers": 1})

    import numpy as np
    import orjson
    import torch

    from vlmtool.clip.model import load_clip
    from vlmtool.clip.preprocess import ClipPrep
    from vlmtool.core.batches import ReadOptions, ShardStream, loader
    from vlmtool.core.runtime import autocast, resolve_device, resolve_precision
    from vlmtool.core.records import tar_records
    from vlmtool.core.samples import parse_record
    from vlmtool.core.shards import shard_refs
    from vlmtool.filter import FilterOptions, run_filter

    torch.manual_seed(0)
    w = world(a.cache, a.samples, a.sizes, shard_size=max(100, a.samples // 8))
    shards = sorted(str(p) for p in w.glob("*.tar"))
    dev = resolve_device(a.device)
    dtype = resolve_precision(a.precision, dev)
    loaded = load_clip(a.model, a.pretrained or "random", device=dev)
    model_dir = a.pretrained
    if model_dir is None:  # save the random weights so that the job loads the very same model
        from vlmtool.clip.train import save_model

        model_dir = tempfile.mkdtemp(prefix="bench-clip-")
        save_model(Path(model_dir), loaded.model, loaded, 0, {"bench": True})
    n = a.samples
    B = a.batch_size
    S = loaded.preprocess.size

    # (a) model alone on ready tensors
    x = torch.randn(B, 3, S, S, device=dev)
    tok = loaded.tokenizer(["a red circle to the left of a blue square"] * B).to(dev)
    with torch.inference_mode(), autocast(dev, dtype):
        loaded.model.encode_image(x), loaded.model.encode_text(tok)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        reps = []
        for _ in range(3):  # the median of three: CPU timings here vary by about 10%
            t0 = time.perf_counter()
            for _ in range(max(1, n // B)):
                fi = loaded.model.encode_image(x, normalize=True)
                ft = loaded.model.encode_text(tok, normalize=True)
                (fi * ft).sum(-1).cpu()
            reps.append((time.perf_counter() - t0) / (max(1, n // B) * B))
        t_a = sorted(reps)[1]

    # (b) decode + preprocess alone, the job's own loader
    prep = ClipPrep(loaded.preprocess, loaded.tokenizer, "fast")
    t0 = time.perf_counter()
    seen = 0
    for msg in loader(ShardStream(shard_refs(shards), prep, B, ReadOptions()), a.workers, shards=len(shards)):
        seen += len(getattr(msg, "keys", []))
    t_b = (time.perf_counter() - t0) / seen

    # (c) the job
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        s = run_filter([str(w)], tmp + "/fast", FilterOptions(pretrained=model_dir, min_score=-1.0, batch_size=B, workers=a.workers, device=a.device,
                       precision=a.precision, progress=False))
        t_c = (time.perf_counter() - t0) / s["samples"]
        fast_scores = [orjson.loads(x)["score"] for x in Path(tmp, "fast", "scores.jsonl").read_bytes().splitlines()]
        run_filter([str(w)], tmp + "/exact", FilterOptions(pretrained=model_dir, min_score=-1.0, batch_size=B, workers=a.workers, device=a.device,
                   precision=a.precision, preprocess="exact", progress=False))
        exact_scores = [orjson.loads(x)["score"] for x in Path(tmp, "exact", "scores.jsonl").read_bytes().splitlines()]
    dev_scores = np.abs(np.asarray(fast_scores) - np.asarray(exact_scores))

    # (d) naive loop over a slice (it is slow), one pair at a time
    from PIL import Image
    import io

    n_naive = min(n, 200)
    recs = []
    for sh in shard_refs(shards):
        for rec in tar_records(sh):
            if isinstance(rec, dict):
                recs.append(rec)
            if len(recs) >= n_naive:
                break
        if len(recs) >= n_naive:
            break
    t0 = time.perf_counter()
    with torch.inference_mode(), autocast(dev, dtype):
        for rec in recs:
            img = loaded.transform(Image.open(io.BytesIO(rec["jpg"])).convert("RGB"))[None].to(dev)
            fi = loaded.model.encode_image(img, normalize=True)
            ft = loaded.model.encode_text(loaded.tokenizer([rec["txt"].decode()]).to(dev), normalize=True)
            float((fi * ft).sum())
    t_d = (time.perf_counter() - t0) / len(recs)

    # preprocessing per core: fast vs open_clip's transform, one process, same images
    samples = [parse_record(r, "bench") for r in recs]
    exact = ClipPrep(loaded.preprocess, loaded.tokenizer, "exact", loaded.transform)
    t0 = time.perf_counter()
    for smp in samples:
        prep.prepare(smp)
    t_fast = (time.perf_counter() - t0) / len(samples)
    t0 = time.perf_counter()
    for smp in samples:
        exact.prepare(smp)
    t_exact = (time.perf_counter() - t0) / len(samples)

    rate = lambda t: 1.0 / t  # noqa: E731
    shared = dev.type == "cpu"
    bound = 1.0 / (t_a + t_b) if shared else min(rate(t_a), rate(t_b))
    print(f"machine: {machine()}")
    print(f"model: {a.model} ({'trained: ' + a.pretrained if a.pretrained else 'random weights'}), {S} px, batch {B}, "
          f"device {dev}, precision {dtype or 'fp32'}, workers {a.workers}")
    print(f"world: {n} samples, sizes={a.sizes}, {len(shards)} shards")
    print(f"(a) model alone             : {rate(t_a):9.1f} samples/s")
    print(f"(b) decode+preprocess alone : {rate(t_b):9.1f} samples/s")
    print(f"    bound ({'serial sum, shared CPU' if shared else 'slower of a, b'}): {bound:9.1f} samples/s")
    print(f"(c) filter end to end       : {rate(t_c):9.1f} samples/s   -> ratio {rate(t_c) / bound:.2f} of the bound")
    print(f"(d) naive loop              : {rate(t_d):9.1f} samples/s   -> filter is {rate(t_c) / rate(t_d):.1f}x the naive loop")
    print(f"preprocess per core: fast {rate(t_fast):.0f}/s vs open_clip transform {rate(t_exact):.0f}/s -> {t_exact / t_fast:.2f}x")
    print(f"score deviation fast vs exact over {len(dev_scores)} pairs: max {dev_scores.max():.5f}, mean {dev_scores.mean():.6f}")


if __name__ == "__main__":
    main()
