"""`vlmtool demo`: every stage that exists, in order, on a freshly made shapes world.

world -> inspect -> clip-train (a tiny CLIP, from scratch, on CPU) -> filter (drop mismatched
captions, measured against the world's truth) -> synth (offline captions teacher) -> budget.
Rerunning with the same --out resumes: finished stages are skipped by their own records.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def _log(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr)


def run_demo(out: str, samples: int = 256, progress: bool = True, train_steps: int = 80) -> dict:
    import orjson

    from vlmtool.budget.dataset import budget_dataset
    from vlmtool.clip.train import ClipTrainOptions, run_clip_train
    from vlmtool.filter import FilterOptions, run_filter
    from vlmtool.inspect_shards import InspectOptions, run_inspect
    from vlmtool.synth.job import run_synth
    from vlmtool.world import make_world

    out_p = Path(out)
    t0 = time.perf_counter()
    steps: dict[str, dict] = {}
    world_dir = out_p / "world"
    train_dir = out_p / "train-world"
    if not (world_dir / "world.json").exists():
        _log(f"making a shapes world of {samples} samples (30% mismatched captions, 3% broken) in {world_dir}")
        make_world(world_dir, samples=samples, shard_size=max(16, samples // 8), seed=0, mismatch=0.3, broken=0.03, videos=1,
                   sizes="small", progress=progress)
    if not (train_dir / "world.json").exists():
        _log("making a separate clean world to train the CLIP on")
        make_world(train_dir, samples=2000, shard_size=250, seed=1, sizes="small", progress=progress)
    steps["world"] = {"dir": str(world_dir)}

    _log("inspect: what is in the shards")
    ins = run_inspect([str(world_dir)], str(out_p / "inspect"), InspectOptions(workers=2, progress=progress))
    steps["inspect"] = {k: ins[k] for k in ("samples", "ok", "rejected")}

    model_dir = out_p / "clip"
    if not (model_dir / "model.safetensors").exists() or orjson.loads((model_dir / "config.json").read_bytes())["step"] < train_steps:
        _log(f"clip-train: a tiny CLIP, {train_steps} steps on CPU")
        tr = run_clip_train([str(train_dir)], str(model_dir), ClipTrainOptions(model="tiny-clip", steps=train_steps, batch_size=128,
                                                                               workers=1, save_every=train_steps, progress=progress))
        steps["clip-train"] = {k: tr[k] for k in ("steps", "loss_first", "loss_last", "seconds")}

    _log("filter: keep the 70% best-matching pairs")
    f = run_filter([str(world_dir)], str(out_p / "filter"), FilterOptions(pretrained=str(model_dir), keep_fraction=0.7, workers=2,
                                                                          plot=True, progress=progress))
    truth = {}
    for line in (out_p / "filter" / "scores.jsonl").read_bytes().splitlines():
        row = orjson.loads(line)
        truth[(row["shard"], row["key"])] = row
    mism = _mismatched(world_dir)
    scored = [r for r in truth.values() if r["score"] is not None]
    removed = [r for r in scored if not r["kept"]]
    tp = sum(mism.get(r["key"], False) for r in removed)
    n_mism = sum(mism.get(r["key"], False) for r in scored)
    steps["filter"] = {"kept": f["kept"], "scored": len(scored), "modality_gap": f["modality_gap"],
                       "removal_precision": round(tp / len(removed), 3) if removed else None,
                       "removal_recall": round(tp / n_mism, 3) if n_mism else None, "report": str(out_p / "filter" / "report.png")}

    _log("synth: instruction pairs from the kept shards (offline captions teacher)")
    s = run_synth([str(out_p / "filter" / "shards")], str(out_p / "synth"), teacher="captions", progress=progress)
    steps["synth"] = {k: s[k] for k in ("instructions", "by_task", "rejected", "hallucinations")}

    _log("budget: visual tokens of the kept images")
    b = budget_dataset([str(out_p / "filter" / "shards")], ["llava-1.5", "llava-next", "qwen2-vl"], {}, progress=False)
    steps["budget"] = {m: {k: v for k, v in st.items() if k in ("images", "total", "mean", "p95")} for m, st in b["models"].items()}
    return {"demo": str(out_p), "steps": steps, "seconds": round(time.perf_counter() - t0, 2)}


def _mismatched(world_dir: Path) -> dict[str, bool]:
    import tarfile

    import orjson

    out = {}
    for t in sorted(world_dir.glob("*.tar")):
        with tarfile.open(t) as tf:
            for m in tf:
                if m.name.endswith(".json"):
                    out[m.name.split(".")[0]] = bool(orjson.loads(tf.extractfile(m).read()).get("mismatched"))
    return out
