"""`vlmtool demo`: the whole pipeline, in order, on a freshly made shapes world.

world -> inspect -> clip-train (a tiny CLIP from scratch, on CPU) -> filter (drop mismatched
captions, measured against the world's truth) -> synth (offline captions teacher) -> budget ->
encode (the CLIP's patch tokens) -> train stages 0, 1, 2 (the bundled LM with an MLP
connector) -> eval (POPE's three settings, the blind baseline, the swap test, CHAIR) on the test
world. Every stage is a job with its own folder under --out: rerunning the same command
resumes, and a finished stage is skipped by its own records.

Four worlds, drawn from seeds that never meet: the train world (filtered, synthesized, encoded,
trained on), the clean world the CLIP trains on, a dev world (the only one any choice of the
demo's recipe was tuned on: `vlmtool eval --checkpoint DEMO/stage2 DEMO/dev`) and the test world
(the only one the demo reports). `--seed` moves the train and clip worlds and every training
seed; the dev and test worlds stay the same for every seed, so runs compare on the same probes.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vlmtool.core.options import PROGRESS, option


# The dev and test worlds' seeds: above any --seed's train and clip worlds (seed*10 + 0 or 1, so
# --seed stops at 89,999: 90,000 would put the clip world on the dev world).
DEV_SEED, TEST_SEED = 900_001, 900_002
MAX_SEED = (DEV_SEED - 2) // 10


@dataclass(frozen=True)
class DemoOptions:
    """The demo's sizes: small enough for 2 CPU cores, large enough for the figures to mean something."""

    samples: int = option(2400, "Size of the train world the pipeline filters and trains on.", flags=("--samples", "-n"), min=64)
    test: int = option(200, "Size of the test world eval reads (the only one the demo reports).", min=16)
    dev: int = option(200, "Size of the dev world (written for tuning: the only world a choice may be tuned on).", min=16)
    # the clean world the CLIP trains on (its captions name the objects alone): 6,000 rather than
    # 2,000 images for the same steps lifted the tower's linear probe on the dev world from 0.90
    # to 0.93 (docs/benchmarks.md); drawing them takes seconds
    clip_samples: int = 6000
    seed: int = option(0, "Seed of the train and clip worlds and of every training run (the dev and test worlds are the same "
                       "for every seed).", min=0, max=MAX_SEED)
    kind: str = option("scenes", "The worlds' objects: scenes (16 kinds in 4 scene types) or shapes (the 6 shapes).")
    clip_model: str = "tiny-rn-clip"
    # 1,800 steps rather than 1,200: the tower caps what the LM can read (the runs' POPE F1 ranks
    # as their towers' linear probes do), and the two weakest seeds' towers rose from probe 0.900
    # and 0.886 to 0.928 and 0.909, their dev F1 from 0.86-0.89 to 0.88-0.93 (docs/benchmarks.md);
    # a larger or smaller batch for the same images and a higher or lower lr were worse
    clip_steps: int = option(1800, "Steps of CLIP training (the vision tower).", min=1)
    clip_batch: int = 64
    clip_lr: float = 2e-3
    layer: int = -1  # the tower block whose tokens the LM reads
    lm_steps: int = 100  # stage 0
    align_steps: int = 100  # stage 1
    # 4,000 steps of 16: more updates raised the worst runs each time they were tried (dev world:
    # 1,600 of 32 -> 3,200 of 16 on a 2-core Intel Xeon; 3,200 -> 4,000 of 16 on a 2-core AMD EPYC,
    # where seeds 1 and 2 went from dev F1 0.79-0.82 and 0.85-0.87 to 0.90-0.91 and 0.89-0.90); a
    # higher lr and a larger train world were worse (docs/benchmarks.md)
    tune_steps: int = option(4000, "Steps of stage-2 instruction tuning.", min=1)
    tune_batch: int = option(16, "Conversations in each stage-2 step (stages 0 and 1 take 32 samples a step).", min=1)
    tune_lr: float = 1e-3
    pack: int = 128  # every stage packs its items into rows of this many tokens (0: one a row, padded)
    d_model: int = 128
    n_layers: int = 4
    batch_size: int = 32
    progress: bool = PROGRESS()


def _log(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr)


def world_seeds(opts: DemoOptions) -> dict[str, int]:
    if not 0 <= opts.seed <= MAX_SEED:
        from vlmtool.errors import UsageError

        raise UsageError(f"--seed must be 0 to {MAX_SEED:,}: the train and clip worlds (10 x seed, +1) stay below "
                         f"the dev and test worlds' seeds ({DEV_SEED:,}, {TEST_SEED:,})")
    return {"train": opts.seed * 10, "clip": opts.seed * 10 + 1, "dev": DEV_SEED, "test": TEST_SEED}


def run_demo(out: str, opts: DemoOptions = DemoOptions()) -> dict:
    from dataclasses import asdict

    from vlmtool.core.runtime import float_path
    from vlmtool.core.shards import write_json

    t0 = time.perf_counter()
    seeds = world_seeds(opts)  # a --seed out of range is refused before anything is written
    out_p = Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    write_json(out_p / "demo.json", {"options": asdict(opts), "worlds": seeds})  # what bench/ablation.py reads
    steps: dict[str, dict] = {}
    world_dir, test_dir = _worlds(out_p, opts, steps)
    model_dir = _clip(out_p, opts, steps)
    kept = _filter(out_p, world_dir, model_dir, opts, steps)
    instructions = _synth(out_p, kept, opts, steps)
    _budget(kept, steps)
    feats = _encode(out_p, kept, model_dir, opts, steps)
    ckpt = _train(out_p, feats, instructions, opts, steps)
    report = _eval(out_p, ckpt, test_dir, opts, steps)
    worlds = {name: {"seed": seed, "folder": str(out_p / _FOLDERS[name])} for name, seed in world_seeds(opts).items()}
    return {"demo": str(out_p), "checkpoint": str(ckpt), "seed": opts.seed, "kind": opts.kind, "worlds": worlds,
            **{k: report.get(k) for k in ("pope", "blind", "swap", "chair", "negatives_overlap")},
            "float_path": float_path(), "steps": steps, "seconds": round(time.perf_counter() - t0, 2)}


_FOLDERS = {"train": "world", "clip": "clip-world", "dev": "dev", "test": "test"}


def _worlds(out_p: Path, opts: DemoOptions, steps: dict) -> tuple[Path, Path]:
    from vlmtool.inspect_shards import InspectOptions, run_inspect

    folders = make_worlds(out_p, opts)
    _log("inspect: what is in the shards")
    ins = run_inspect([str(folders["train"])], str(out_p / "inspect"), InspectOptions(workers=2, progress=opts.progress))
    steps["inspect"] = {k: ins[k] for k in ("samples", "ok", "rejected")}
    return folders["train"], folders["test"]


def make_worlds(out_p: Path, opts: DemoOptions) -> dict[str, Path]:
    """The demo's four worlds (train, clip, dev, test), each written unless its folder already
    holds it; returns their folders."""
    from vlmtool.world import make_world

    seeds = world_seeds(opts)
    made = [("train", dict(samples=opts.samples, shard_size=max(16, opts.samples // 8), mismatch=0.3, broken=0.03, videos=1),
             "the train world (30% mismatched captions, 3% broken)"),
            ("clip", dict(samples=opts.clip_samples, shard_size=250, plain=1.0),
             "a clean world to train the CLIP on, captions naming the objects alone"),
            ("dev", dict(samples=opts.dev, shard_size=max(16, opts.dev // 2)), "the dev world (recipe choices are tuned on it)"),
            ("test", dict(samples=opts.test, shard_size=max(16, opts.test // 2)), "the test world (the one eval reports)")]
    for name, kw, what in made:
        folder = out_p / _FOLDERS[name]
        if not _same_world(folder, seeds[name], opts.kind, kw["samples"]):
            _log(f"world: {what}, {kw['samples']} samples, seed {seeds[name]}, in {folder}")
            make_world(folder, sizes="square", seed=seeds[name], kind=opts.kind, progress=opts.progress, **kw)
    return {name: out_p / _FOLDERS[name] for name, _, _ in made}


def _same_world(folder: Path, seed: int, kind: str, samples: int) -> bool:
    """Whether FOLDER already holds this world (a rerun resumes; other options make it anew)."""
    import orjson

    try:
        w = orjson.loads((folder / "world.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return False
    return (w.get("seed"), w.get("kind"), w.get("samples")) == (seed, kind, samples)


def _clip(out_p: Path, opts: DemoOptions, steps: dict) -> Path:
    from vlmtool.clip.train import ClipTrainOptions, run_clip_train

    model_dir = out_p / "clip"
    _log(f"clip-train: a tiny CLIP ({opts.clip_model}), {opts.clip_steps} steps on CPU")
    tr = run_clip_train([str(out_p / _FOLDERS["clip"])], str(model_dir),
                        ClipTrainOptions(model=opts.clip_model, steps=opts.clip_steps, batch_size=opts.clip_batch, lr=opts.clip_lr,
                                         warmup=20, workers=0, save_every=opts.clip_steps, seed=opts.seed, progress=opts.progress))
    steps["clip-train"] = {k: tr[k] for k in ("steps", "loss_first", "loss_last", "seconds")}
    return model_dir


def _filter(out_p: Path, world_dir: Path, model_dir: Path, opts: DemoOptions, steps: dict) -> Path:
    import orjson

    from vlmtool.filter import FilterOptions, run_filter

    _log("filter: keep the 70% best-matching pairs")
    f = run_filter([str(world_dir)], str(out_p / "filter"), FilterOptions(pretrained=str(model_dir), keep_fraction=0.7, workers=2,
                                                                          plot=True, progress=opts.progress))
    rows = [orjson.loads(line) for line in (out_p / "filter" / "scores.jsonl").read_bytes().splitlines()]
    mism = _mismatched(world_dir)
    scored = [r for r in rows if r["score"] is not None]
    removed = [r for r in scored if not r["kept"]]
    tp = sum(mism.get(r["key"], False) for r in removed)
    n_mism = sum(mism.get(r["key"], False) for r in scored)
    steps["filter"] = {"kept": f["kept"], "scored": len(scored), "modality_gap": f["modality_gap"],
                       "removal_precision": round(tp / len(removed), 3) if removed else None,
                       "removal_recall": round(tp / n_mism, 3) if n_mism else None, "report": str(out_p / "filter" / "report.png")}
    return out_p / "filter" / "shards"


def _synth(out_p: Path, kept: Path, opts: DemoOptions, steps: dict) -> Path:
    from vlmtool.synth.job import run_synth
    from vlmtool.synth.options import SynthOptions

    _log("synth: instruction pairs from the kept shards (offline captions teacher)")
    s = run_synth([str(kept)], str(out_p / "synth"), SynthOptions(teacher="captions", tasks=SYNTH_TASKS, per_sample=SYNTH_PER_SAMPLE,
                                                                  balance=SYNTH_BALANCE, progress=opts.progress))
    steps["synth"] = {k: s.get(k) for k in ("instructions", "by_task", "rejected", "hallucinations")}
    return out_p / "synth" / "instructions.jsonl"


# LLaVA-Instruct's three tasks and the negatives, plus a conversation of presence probes alone
# (docs/benchmarks.md: the probes are what teach the model to look). Each image gets the three
# tasks that ask about its objects (conversation, negative, probes: drawn first, by their weights)
# and one of detail and reasoning: of the records stage 2 sees, 75% ask about the objects rather than
# 60% (long descriptions' share of the text falls from 41% to 26%), at the same cost a step. On a
# 2-core AMD EPYC, seed 1 then learned to look where it had not (dev F1 0.52-0.55 -> 0.79-0.82),
# and seeds 0 and 2 did no worse (docs/benchmarks.md).
SYNTH_TASKS = "conversation=1000,negative=1000,probes=1000,detail=1,reasoning=1"
SYNTH_PER_SAMPLE = 4
# POPE's draw: balanced data (--balance all, or the first build's draw) moved each seed by up to
# 0.05 dev F1 in no one direction and had the lower mean over three seeds (dev F1 0.905-0.913
# against 0.923, both_correct 0.768-0.798 against 0.819; docs/benchmarks.md)
SYNTH_BALANCE = "none"


def _budget(kept: Path, steps: dict) -> None:
    from vlmtool.budget.dataset import budget_dataset

    _log("budget: visual tokens of the kept images")
    b = budget_dataset([str(kept)], ["llava-1.5", "llava-next", "qwen2-vl"], {}, progress=False)
    steps["budget"] = {m: {k: v for k, v in st.items() if k in ("images", "total", "mean", "p95")} for m, st in b["models"].items()}


def _encode(out_p: Path, kept: Path, model_dir: Path, opts: DemoOptions, steps: dict) -> Path:
    from vlmtool.encode import EncodeOptions, run_encode

    _log(f"encode: the CLIP's token grid of the kept images (block {opts.layer})")
    e = run_encode([str(kept)], str(out_p / "features"), EncodeOptions(pretrained=str(model_dir), layer=opts.layer, workers=2,
                                                                                       progress=opts.progress))
    steps["encode"] = {k: e.get(k) for k in ("samples", "ok", "rejected", "tokens", "bytes")}
    return out_p / "features"


def stage_plan(out_p: Path, instructions: Path, opts: DemoOptions, connector: str = "mlp", prefix: str = "stage",
               stage0: Path | None = None) -> list[tuple[int, Path, dict, str]]:
    """The demo's three training stages as (stage, folder, TrainOptions fields, what): the bundled
    LM pretrained on the text, the connector aligned on captions, then instruction tuning on synth's
    data with the LM unfrozen. bench/ablation.py reuses it for the other connectors and data."""
    # workers=0: the items are prepared in the training process between steps. On 2 cores a loader
    # process competes with the two torch threads, and stage 2 waited 20 ms a step on it, where
    # preparing a step's 16 items takes 7 ms (docs/benchmarks.md)
    common = dict(batch_size=opts.batch_size, d_model=opts.d_model, n_layers=opts.n_layers, n_heads=4, vocab_size=2048,
                  max_seq=512, workers=0, progress=opts.progress, connector=connector, seed=opts.seed)
    from vlmtool.vlm.connectors import CONNECTORS

    s0, s1, s2 = stage0 or out_p / f"{prefix}0", out_p / f"{prefix}1", out_p / f"{prefix}2"
    pack = opts.pack if CONNECTORS[connector].packs else 0  # a connector that cannot pack trains one conversation a row
    stages = [(1, s1, dict(steps=opts.align_steps, init=str(s0), pack=pack), "alignment: only the connector trains, on captions"),
              (2, s2, dict(steps=opts.tune_steps, init=str(s1), instructions=str(instructions), lr=opts.tune_lr, text_mix=0.1,
                           pack=pack, batch_size=opts.tune_batch),
               "instruction tuning on synth's data, the LM unfrozen")]
    if stage0 is None:  # text only: packs with any connector (the same loss as padded rows, at half the time)
        stages.insert(0, (0, s0, dict(steps=opts.lm_steps, instructions=str(instructions), pack=opts.pack),
                          "language-model pretraining on the text"))
    return [(stage, folder, {**common, **kw, "save_every": kw["steps"]}, what) for stage, folder, kw, what in stages]


def run_stages(feats: Path, plan: list[tuple[int, Path, dict, str]], steps: dict, label: str = "train") -> Path:
    from vlmtool.vlm.train import TrainOptions, run_train

    for stage, folder, kw, what in plan:
        _log(f"{label} stage {stage}: {what}")
        t = run_train([str(feats)], str(folder), TrainOptions(stage=stage, **kw))
        # seconds: this run's; train_seconds: the checkpoint's, every run's (a stage found trained: 0 and its total)
        keys = ("steps", "loss_first", "loss_last", "val_loss", "val_text_loss", "seconds", "train_seconds")
        steps[f"{label}-{stage}"] = {k: t.get(k) for k in keys}
    return plan[-1][1]


def _train(out_p: Path, feats: Path, instructions: Path, opts: DemoOptions, steps: dict) -> Path:
    return run_stages(feats, stage_plan(out_p, instructions, opts), steps)


def _eval(out_p: Path, ckpt: Path, test: Path, opts: DemoOptions, steps: dict) -> dict:
    import orjson

    from vlmtool.evals import EvalOptions, evaluate

    from vlmtool.core.shards import write_json
    from vlmtool.encode.job import file_sha256

    report, stamp = out_p / "eval" / "report.json", out_p / "eval" / "evaluated.json"
    weights = file_sha256(ckpt / "model.safetensors")  # the model's content: a retrained model at the same path is another model
    if report.exists() and stamp.exists() and orjson.loads(stamp.read_bytes()).get("weights_sha256") == weights:
        _log("eval: done before for these weights (eval/report.json)")
        return orjson.loads(report.read_bytes())
    _log("eval: POPE (random, popular, adversarial), blind, swap and CHAIR on the test world")
    r = evaluate(str(ckpt), [str(test)], EvalOptions(device="cpu", chair_images=60, progress=opts.progress), out=str(out_p / "eval"))
    write_json(stamp, {"checkpoint": str(ckpt), "weights_sha256": weights})
    steps["eval"] = {"report": str(out_p / "eval" / "report.png"), "seconds": r.get("seconds")}
    return r


def _mismatched(world_dir: Path) -> dict[str, bool]:
    """key -> whether the world gave that sample another scene's caption (its truth, in the json)."""
    import orjson

    from vlmtool.core.records import Reject, tar_records
    from vlmtool.core.shards import shard_refs

    out = {}
    for ref in shard_refs(sorted(str(t) for t in world_dir.glob("*.tar"))):
        for rec in tar_records(ref):
            if not isinstance(rec, Reject) and "json" in rec:
                out[rec["__key__"]] = bool(orjson.loads(rec["json"]).get("mismatched"))
    return out
