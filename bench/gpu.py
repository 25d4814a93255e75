"""The GPU benchmark behind bench/gpu.sh (see there); prints one line a run.

Bound: the model alone on ready tensors (filter: image and text towers; encode: the image
tower) at the same batch size and precision, on the same device. A ratio near 1 means the
data side keeps the device busy.
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
machine, world = _common["machine"], _common["world"]


def peak_gib(dev) -> str:
    import torch

    if dev.type != "cuda":
        return "n/a (CPU)"
    return f"{torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB"


def reset_peak(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)


def model_bound(loaded, dev, dtype, batch: int, text: bool, reps: int) -> float:
    """Images/s of the model alone on ready tensors."""
    import torch

    from vlmtool.core.runtime import autocast

    S = loaded.preprocess.size
    x = torch.randn(batch, 3, S, S, device=dev)
    tok = loaded.tokenizer(["a photo of a red cube"] * batch).to(dev)
    with torch.inference_mode(), autocast(dev, dtype):
        for i in range(reps + 1):
            if i == 1:
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                t0 = time.perf_counter()
            loaded.model.encode_image(x)
            if text:
                loaded.model.encode_text(tok)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    return batch * reps / (time.perf_counter() - t0)


def job_line(job: str, decode: str, prec: str, ips: float, bound: float, dev) -> str:
    return (f"{job:<7} decode={decode:<6} precision={prec}: {ips:9.1f} images/s, {ips / bound:5.2f} of the model-only bound "
            f"({bound:.1f} images/s), peak GPU memory {peak_gib(dev)}")


def run_jobs(a, w: Path, tmp: Path, dev, precisions: list[str]) -> Path:
    import torch

    from vlmtool.clip.model import load_clip
    from vlmtool.core.runtime import resolve_precision
    from vlmtool.encode import EncodeOptions, run_encode
    from vlmtool.filter import FilterOptions, run_filter

    loaded = load_clip(a.model, "random", device=dev)
    torch.save(loaded.model.state_dict(), tmp / "weights.pt")
    common = {"pretrained": str(tmp / "weights.pt"), "model": a.model, "device": dev.type, "workers": a.workers, "progress": False}
    feats = None
    for prec in precisions:
        dtype = resolve_precision(prec, dev)
        b_filter = model_bound(loaded, dev, dtype, a.batch_size, True, a.reps)
        b_encode = model_bound(loaded, dev, dtype, a.batch_size, False, a.reps)
        for decode in ("cpu", "device"):
            reset_peak(dev)
            t0 = time.perf_counter()
            s = run_filter([str(w)], str(tmp / f"f-{prec}-{decode}"), FilterOptions(min_score=0.0, batch_size=a.batch_size,
                                                                                      precision=prec, decode=decode, **common))
            print(job_line("filter", decode, prec, s["ok"] / (time.perf_counter() - t0), b_filter, dev), flush=True)
            reset_peak(dev)
            t0 = time.perf_counter()
            out = tmp / f"e-{prec}-{decode}"
            s = run_encode([str(w)], str(out), EncodeOptions(batch_size=a.batch_size, precision=prec, decode=decode, **common))
            print(job_line("encode", decode, prec, s["ok"] / (time.perf_counter() - t0), b_encode, dev), flush=True)
            feats = feats or out
    return feats


def train_line(a, feats: Path, tmp: Path, dev, prec: str) -> None:
    from vlmtool.vlm.train import TrainOptions, run_train

    reset_peak(dev)
    opts = TrainOptions(stage=1, steps=a.train_steps, batch_size=a.train_batch, d_model=a.d_model, n_layers=a.n_layers,
                        vocab_size=a.vocab, max_seq=512, workers=min(a.workers, 1), save_every=10**6, device=dev.type,
                        precision=prec, progress=False, warmup=0, val_samples=0)
    s = run_train([str(feats)], str(tmp / f"train-{prec}"), opts)
    print(f"train   stage 1 precision={prec}: {s['samples_per_s']} samples/s over {s['steps']} steps of {a.train_batch}, "
          f"peak GPU memory {peak_gib(dev)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dry", action="store_true", help="tiny sizes (CI): tiny-clip, a few small images, two train steps")
    ap.add_argument("--root", default=None, help="where the world and outputs go (default: a temporary folder)")
    a = ap.parse_args()
    full = dict(model="ViT-B-32", samples=2000, sizes="varied", batch_size=256, workers=max(1, (os.cpu_count() or 2) - 2),
                reps=10, train_steps=30, train_batch=64, d_model=512, n_layers=8, vocab=4096)
    dry = dict(model="tiny-clip", samples=24, sizes="small", batch_size=8, workers=1, reps=2, train_steps=2, train_batch=4,
               d_model=32, n_layers=2, vocab=300)
    for k, v in (dry if a.dry else full).items():
        setattr(a, k, v)
    import torch

    from vlmtool.core.runtime import resolve_device

    dev = resolve_device("auto")
    if dev.type != "cuda":
        print("no GPU: running on the CPU (figures are not GPU figures)", flush=True)
    precisions = ["fp16", "bf16"]  # autocast at both works on the CPU too (torch 2.14), slowly
    print(f"machine: {machine()}; torch {torch.__version__}; {a.model}, {a.samples} images ({a.sizes}), batch {a.batch_size}",
          flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as td:
        root = Path(a.root or td)
        w = world(str(root), a.samples, a.sizes, shard_size=max(8, a.samples // 8))
        feats = run_jobs(a, w, root, dev, precisions)
        train_line(a, feats, root, dev, precisions[-1])
    print(f"total {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
