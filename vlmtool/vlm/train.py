"""`vlmtool train`: the LLaVA curriculum on feature shards (or image shards for the native
connector), in stages.

- stage 0: language-model pretraining on the text of the inputs (captions, instruction texts);
  the bundled tokenizer is trained on that text first when there is no --init.
- stage 1: alignment: LM frozen (the tower is not here: features are precomputed), only the
  connector trains, on "Describe the image briefly." -> the caption, loss on the answer only.
- stage 2: instruction tuning on synth's rows joined to the features by (shard stem, key), LM
  unfrozen, text-only samples mixed in at --text-mix, and a text-only validation loss reported
  beside the multimodal one (the guard against forgetting).

The output folder is the checkpoint (`vlm.save_checkpoint`: config.json, model.safetensors,
tokenizer.json, checkpoint.json with the tower reference) plus `train_state.pt`: optimizer,
step, data position, RNG states and the weights of that step, saved before the checkpoint so a
kill at any moment leaves one consistent resume point. A rerun resumes exactly (core.train).
Under torchrun each rank reads its own shards; the loss is averaged over the label tokens of
the whole global batch, so N ranks match one process with N times the batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from vlmtool.core.job import options_dict
from vlmtool.core.runtime import dist_info, precision_name, resolve_device, resolve_precision
from vlmtool.core.shards import shard_refs
from vlmtool.core.train import (
    LOG_FILE,
    Batcher,
    Schedule,
    TrainRun,
    TrainStream,
    barrier,
    length_grouped,
    load_state,
    save_state,
    train_run,
)
from vlmtool.errors import JobFailed, UsageError
from vlmtool.vlm.options import TrainOptions
from vlmtool.vlm.data import (
    Entry,
    Inputs,
    Instructions,
    Prep,
    collate_items,
    open_inputs,
    scan,
    text_item,
)

MAX_GRAD_NORM = 1.0  # LLaVA-1.5's max_grad_norm (HF Trainer default)


@dataclass
class Plan:
    """What this run trains on, worked out before any model is built."""

    src: Inputs
    entries: list[Entry]
    instructions: Instructions
    usable: list[tuple[str, str]]  # (stem, key) of the samples the stage uses, in input order
    val_keys: frozenset = frozenset()
    counts: dict = field(default_factory=dict)

    def texts(self):
        yield from (e.caption for e in self.entries if e.caption)
        yield from self.instructions.texts()


def _recipe(name: str):
    """The connector class of that name (vlm/connectors.py, which imports torch: only when needed)."""
    from vlmtool.vlm.connectors import connector_class

    return connector_class(name, "--connector")


def _check(opts: TrainOptions) -> None:
    if opts.stage not in (0, 1, 2):
        raise UsageError(f"--stage must be 0, 1 or 2, got {opts.stage}")
    _recipe(opts.connector)
    if opts.stage == 2 and not opts.instructions:
        raise UsageError("stage 2 trains on instruction rows: give --instructions FILE (synth's instructions.jsonl)")
    if not 0 <= opts.text_mix < 1:
        raise UsageError(f"--text-mix must be in [0, 1), got {opts.text_mix}")
    if opts.init is not None and not opts.init.strip():
        raise UsageError("--init is empty: give a checkpoint folder, or leave out --init to start from scratch")
    if opts.lm != "bundled" and not opts.lm.startswith("hf:"):
        raise UsageError(f"--lm must be 'bundled' or 'hf:PATH_OR_ID', got {opts.lm!r}")
    _check_pack(opts)


def _check_pack(opts: TrainOptions, model=None) -> None:
    """--pack's conditions: on the options, and (with `model`) on the model the run trains."""
    if model is not None:
        if opts.pack and model.config.is_hf:
            raise UsageError(f"--pack needs the bundled LM, and {model.config.lm} is a transformers LM: leave out --pack")
        if opts.pack > model.lm.max_seq:
            raise UsageError(f"--pack {opts.pack} is longer than the LM's context ({model.lm.max_seq} tokens)")
        return
    if opts.pack < 0:
        raise UsageError(f"--pack must be 0 (off) or a row length in tokens, got {opts.pack}")
    if opts.pack and opts.lm != "bundled":
        raise UsageError("--pack needs the bundled LM (packed rows need its per-sample positions and mask): leave out --pack with --lm hf:")
    if opts.pack and opts.stage > 0 and not _recipe(opts.connector).packs:
        raise UsageError(f"--pack works with the mlp connector (each sample's visual slots in its row), not {opts.connector}: leave out --pack")


def make_plan(inputs: list[str], opts: TrainOptions) -> Plan:
    """Scan the inputs and the instruction rows; refuse a run that would train on nothing."""
    images = _recipe(opts.connector).reads == "pixels" and opts.stage > 0
    src = open_inputs(inputs, images=images)
    if opts.stage > 0 and not images and src.kind != "features":
        raise UsageError(f"stage {opts.stage} with the {opts.connector} connector reads feature shards (vlmtool encode); "
                         "image shards are for --connector native or stage 0")
    entries = scan(src)
    ins = Instructions.load(opts.instructions)
    have = {(e.stem, e.key) for e in entries}
    if opts.stage == 2:
        usable = [(e.stem, e.key) for e in entries if (e.stem, e.key) in ins.rows]
    else:
        usable = [(e.stem, e.key) for e in entries if e.caption or (e.stem, e.key) in ins.rows]
    joined = ins.joined(entries)
    counts = {"samples": len(entries), "usable": len(usable), "instruction_rows": ins.total, "instruction_joined": joined,
              "instruction_unjoined": ins.total - ins.malformed - joined, "instruction_malformed": ins.malformed,
              "instruction_malformed_by_reason": dict(sorted(ins.reasons.items())),
              "instruction_keys_without_features": sum(1 for k in ins.rows if k not in have)}
    if not usable:
        raise UsageError(_nothing_cause(opts, entries, ins))
    n_val = min(opts.val_samples, len(usable) // 10)
    return Plan(src, entries, ins, usable, frozenset(usable[:n_val]), counts)


def _nothing_cause(opts: TrainOptions, entries: list[Entry], ins: Instructions) -> str:
    if not entries:
        return "nothing to train on: the input shards hold no readable samples"
    if opts.stage < 2:
        return f"nothing to train on: none of the {len(entries)} samples has a caption"
    if not ins.total:
        return f"nothing to train on: {opts.instructions} holds no instruction rows"
    return (f"nothing to train on: none of the {ins.total} instruction rows joins a sample of the inputs by shard stem and key "
            f"({ins.malformed} malformed): was --instructions made from these shards?")


# ---------------------------------------------------------------------------------- model


def _tokenizer(plan: Plan, opts: TrainOptions, out: Path, is_main: bool, use_dist: bool):
    """The bundled tokenizer trained on the run's text (rank 0 trains and saves; others load)."""
    from vlmtool.vlm.tokenizer import BundledTokenizer, train_tokenizer

    path = out / "tokenizer.json"
    if is_main:
        train_tokenizer(plan.texts(), vocab_size=opts.vocab_size).save(path)
    barrier(use_dist)
    return BundledTokenizer.load(path)


def _connector_fields(opts: TrainOptions, width: int | None) -> dict:
    return _recipe(opts.connector).config_fields(width, opts.patch_size, opts.image_size)


def _fresh(plan: Plan, opts: TrainOptions, out: Path, is_main: bool, use_dist: bool):
    import torch

    from vlmtool.vlm.config import VLMConfig
    from vlmtool.vlm.model import new_model

    torch.manual_seed(opts.seed)  # every rank builds the same initial weights
    conn = _connector_fields(opts, plan.src.width)
    if opts.lm != "bundled":
        return new_model(VLMConfig(lm=opts.lm, **conn))
    tok = _tokenizer(plan, opts, out, is_main, use_dist)
    kv = opts.n_heads // 2 if opts.n_heads % 2 == 0 else opts.n_heads
    torch.manual_seed(opts.seed)
    cfg = VLMConfig(d_model=opts.d_model, n_layers=opts.n_layers, n_heads=opts.n_heads, n_kv_heads=kv, max_seq=opts.max_seq, **conn)
    return new_model(cfg, tok)


def _from_init(plan: Plan, opts: TrainOptions):
    """The --init checkpoint, with a fresh connector when it has none trained (a stage-0 LM) or
    another recipe; a trained connector of another feature width is refused."""
    import torch

    from vlmtool.vlm.checkpoint import load_checkpoint

    ck = load_checkpoint(opts.init)
    if opts.lm != "bundled" and opts.lm != ck.config.lm:
        raise UsageError(f"--lm {opts.lm} differs from the LM of --init {opts.init} ({ck.config.lm}): leave out --lm")
    model, cfg, width = ck.model, ck.config, plan.src.width
    trained = int(ck.extra.get("stage", 0)) >= 1 and cfg.connector == opts.connector
    if trained and _recipe(opts.connector).reads == "features" and width and width != cfg.d_vision:
        raise UsageError(f"the features have width {width} but the {cfg.connector} connector of {opts.init} takes {cfg.d_vision}: "
                         "train on features of the tower it was aligned to, or start stage 1 again")
    if not trained:
        torch.manual_seed(opts.seed)
        model.replace_connector(**_connector_fields(opts, width))
    return model, ck.tokenizer, ck.tower


def _resumed(out: Path, state: dict):
    from vlmtool.vlm.checkpoint import build_from_config
    from vlmtool.vlm.config import VLMConfig

    model, tok = build_from_config(out, VLMConfig.from_json(out / "config.json"))
    model.load_state_dict(state["model"])
    return model, tok, state.get("tower")


def build_model(plan: Plan, opts: TrainOptions, out: Path, state: dict | None, is_main: bool, use_dist: bool):
    """(model, tokenizer, tower): resumed from OUT, continued from --init, or new."""
    if state is not None:
        model, tok, tower = _resumed(out, state)
    elif opts.init:
        model, tok, tower = _from_init(plan, opts)
        tower = plan.src.tower or tower
    else:
        (model, tok), tower = _fresh(plan, opts, out, is_main, use_dist), plan.src.tower
    width = plan.src.width
    if opts.stage > 0 and model.connector.reads == "features" and width and width != model.config.d_vision:
        raise UsageError(f"the features have width {width} but the model's connector takes {model.config.d_vision}")
    return model, tok, tower


# ---------------------------------------------------------------------------------- steps


def make_train_step(ddp, opt, params, dev, dtype, use_dist: bool, world: int, pad_id: int, max_len: int, pack: int = 0):
    """One optimizer step on a list of items -> metrics. The loss is the mean over the label
    tokens of the global batch: each rank weights its own mean by its share of those tokens
    (DDP then averages the gradients over ranks), so N ranks equal one process. `pack`: the
    batch's items in rows of up to that many tokens (the same loss, fewer padding slots). A device
    out-of-memory error redoes the step in micro-batches with the same result (vlm/microbatch.py)."""
    import torch

    from vlmtool.vlm.microbatch import Accumulator

    acc = Accumulator(ddp, dev, dtype, lambda part: collate_items(part, pad_id, max_len, pack), use_dist, world)

    def step(items, lr, at):
        for g in opt.param_groups:
            g["lr"] = lr
        loss, total = acc.run(opt, items)
        _check_finite("loss", loss, at, items)
        norm = float(torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM))
        _check_finite("gradient norm", norm, at, items)
        opt.step()
        return {"loss": loss, "tokens": total}

    step.backoff = acc.backoff  # its count goes into the summary
    return step


def _check_finite(what: str, value: float, at: int, items: list[dict]) -> None:
    """Stop the run before a non-finite step reaches the weights (nothing is saved after it)."""
    import math

    if not math.isfinite(value):
        keys = [it.get("key", "?") for it in items]
        shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
        raise JobFailed(f"non-finite {what} ({value}) at step {at + 1}; nothing of this step was applied or saved. "
                        f"The batch: {shown}")


def val_loss(model, items: list[dict], pad_id: int, dev, max_len: int, batch_size: int = 16) -> float | None:
    """Mean loss over the label tokens of held-out items (None when there are none)."""
    import torch

    if not items:
        return None
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(items), batch_size):
            batch = {k: v.to(dev) for k, v in collate_items(items[i : i + batch_size], pad_id, max_len).items()}
            out = model(**batch, logits=False)
            total += float(out.loss) * int(out.n_label_tokens)
            n += int(out.n_label_tokens)
    model.train()
    return round(total / n, 5) if n else None


def validation_items(plan: Plan, prep: Prep) -> dict[str, list[dict]]:
    """The held-out slice as multimodal items (stages 1 and 2) and as text-only captions."""
    from vlmtool.core.shards import shard_refs as refs_of

    if not plan.val_keys:
        return {"val_loss": [], "val_text_loss": []}
    shards = sorted({e.shard for e in plan.entries if (e.stem, e.key) in plan.val_keys}, key=plan.src.shards.index)
    mm, text = [], []
    fits = (lambda it: len(it["ids"]) <= prep.max_len) if prep.max_len else (lambda it: True)  # noqa: E731
    for ref in refs_of(shards):
        for s in prep.samples(plan.src, ref):  # spoiled samples are rejects here too: left out
            if isinstance(s, dict) and (s["stem"], s["key"]) in plan.val_keys:
                if prep.stage > 0:
                    mm.extend(it for it in prep.items(s, None) if fits(it))
                if s["caption"]:
                    text.extend(it for it in [text_item(prep.tok, s["caption"])] if fits(it))
    return {"val_loss": mm, "val_text_loss": text}


# ---------------------------------------------------------------------------------- the job


def _loader(refs, prep: Prep, plan: Plan, opts: TrainOptions, dist, skip: int) -> Batcher:
    from vlmtool.core.batches import loader

    stream = TrainStream(refs, None, opts.seed, dist.rank, dist.world_size, buffer=opts.shuffle_buffer,
                         read_shard=partial(prep.read, plan.src))
    mine = len(refs[dist.rank :: dist.world_size])
    items = _never_empty(iter(loader(stream, opts.workers, prefetch=8, shards=mine)), max(1, min(opts.workers, mine)))
    grouped = length_grouped(items, opts.batch_size, lambda it: len(it["ids"]), opts.length_groups, seed=opts.seed)
    return Batcher(grouped, opts.batch_size, skip=skip)


def _never_empty(items, readers: int):
    """Pass the stream through, but stop a run whose shards yield no item at all in a full pass
    (every sample rejected or too long) instead of reading them forever."""
    from vlmtool.core.records import Reject
    from vlmtool.core.train import EpochEnd

    seen, ends, rejected = 0, 0, {}
    for item in items:
        if isinstance(item, EpochEnd):
            ends += 1
            seen += item.read  # items read into the shuffle buffer count, though none came out yet
            if not seen and ends >= readers:
                causes = ", ".join(f"{k}: {v}" for k, v in sorted(rejected.items())) or "no samples"
                raise UsageError(f"nothing to train on: a full pass over this rank's shards gave no usable sample ({causes})")
        elif isinstance(item, Reject):
            rejected[item.reason] = rejected.get(item.reason, 0) + 1
        else:
            seen += 1
        yield item


def _save(stage: Stage, opt, step: int, consumed: int, seconds: float, precision: str = "fp32") -> None:
    """The training state (with this step's weights) first, then the checkpoint folder.
    `seconds`: training time so far, over every run that resumed it (eval's cost table reads it)."""
    from vlmtool.vlm.checkpoint import save_checkpoint

    weights = {k: v.detach().cpu() for k, v in stage.model.state_dict().items()}
    bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:  # never a non-finite checkpoint: the last good one stays
        raise JobFailed(f"non-finite weights at step {step} ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}): "
                        "not saved; lower --lr, or look for spoiled inputs in rejects.jsonl")
    opts, out = stage.run.opts, stage.run.out
    save_state(out, opt, step, consumed, extra={"model": weights, "tower": stage.tower, "train_seconds": seconds})
    save_checkpoint(out, stage.model, stage.tok, tower=stage.tower,
                    extra={"stage": opts.stage, "step": step, "train_seconds": round(seconds, 2), "precision": precision,
                           "options": options_dict(opts)})


def run_train(inputs: list[str], out: str, opts: TrainOptions = TrainOptions()) -> dict:
    _check(opts)
    dist = dist_info()
    dev = resolve_device(opts.device, dist)
    plan = make_plan(inputs, opts)
    with train_run("train", out, opts, shard_refs(plan.src.shards), dist, dev, _saved_state) as run:
        model, tok, tower = build_model(plan, opts, run.out, run.state, dist.is_main, run.use_dist)
        return _train(Stage(run, plan, model, tok, tower))


def _saved_state(out: Path) -> dict | None:
    """The state to resume from: a checkpoint folder whose training state holds its weights."""
    state = load_state(out) if (out / "config.json").exists() else None
    return state if state is not None and "model" in state else None


@dataclass
class Stage:
    """One stage's run: the scaffold's run context and what this trainer built for it."""

    run: TrainRun
    plan: Plan
    model: Any
    tok: Any
    tower: dict | None

    def prep(self) -> Prep:
        """The loader's preparer: the stage's items (visual slots per the connector)."""
        opts, cfg, model, plan = self.run.opts, self.model.config, self.model, self.plan
        return Prep(opts.stage, self.tok, slots=model.connector.slots,
                    native=(cfg.image_size, cfg.patch_size) if model.connector.reads == "pixels" else None,
                    rows=plan.instructions.rows, text_mix=opts.text_mix if opts.stage == 2 else 0.0, seed=opts.seed,
                    skip=plan.val_keys, max_len=model.lm.max_seq, width=plan.src.width if plan.src.kind == "features" else None)


def _train(stage: Stage) -> dict:
    import torch

    run, model, opts = stage.run, stage.model, stage.run.opts
    model.to(run.dev)
    model.freeze(opts.stage)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(model.param_groups(opts.weight_decay, lr=opts.peak_lr), lr=opts.peak_lr)
    run.resume(opt)
    prep = stage.prep()
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=opts.stage == 2) if run.use_dist else model
    batches = _loader(shard_refs(stage.plan.src.shards), prep, stage.plan, opts, run.dist, run.consumed)
    dtype = resolve_precision(opts.precision, run.dev)
    _check_pack(opts, model)
    train_step = make_train_step(ddp, opt, params, run.dev, dtype, run.use_dist, run.dist.world_size, stage.tok.pad_id,
                                 model.lm.max_seq, opts.pack)
    t_start, before = time.perf_counter(), float(run.state.get("train_seconds", 0.0)) if run.state is not None else 0.0
    total = [before]  # the training time the checkpoint holds: every run's, this one's to its last save

    def save(at: int, consumed: int) -> None:
        total[0] = before + time.perf_counter() - t_start
        _save(stage, opt, at, consumed, total[0], precision_name(dtype))

    res = run.fit(batches, train_step, Schedule(opts.peak_lr, opts.steps, opts.warmup), save, f"train stage {opts.stage}",
                  stop=min(opts.steps, opts.stop_at) if opts.stop_at else opts.steps)
    return {**_summary(stage, prep, res, batches), "trainable_tensors": len(params), "precision": precision_name(dtype),
            "oom_backoffs": train_step.backoff.count, "train_seconds": round(total[0], 2)}


def _summary(stage: Stage, prep: Prep, res, batches) -> dict:
    """The run's summary, after the validation losses (main rank) and the rejects are written."""
    from vlmtool.core.shards import dumps
    from vlmtool.core.train import write_rejects

    run, model, plan, opts = stage.run, stage.model, stage.plan, stage.run.opts
    vals = {}
    write_rejects(run.out / (f"rejects-r{run.dist.rank}.jsonl" if run.dist.world_size > 1 else "rejects.jsonl"), batches.reject_rows)
    if run.dist.is_main:
        vals = {k: val_loss(model, v, stage.tok.pad_id, run.dev, model.lm.max_seq) for k, v in validation_items(plan, prep).items()}
        with open(run.out / LOG_FILE, "ab") as f:
            f.write(dumps({"step": res.step, **vals}) + b"\n")
        run.plot(f"vlmtool train stage {opts.stage}: {run.out.name}", "cross-entropy (assistant tokens)")
    return {**run.summary(res, batches), "stage": opts.stage, "connector": model.config.connector, "lm": model.config.lm,
            "lr": opts.peak_lr, **plan.counts, "val_samples": len(plan.val_keys), **vals,
            "samples_per_s": round(res.samples / res.seconds, 2) if res.seconds > 0 else None,
            # the rate once the loader has started (the first batch's wait is a fixed cost, not throughput)
            "samples_per_s_after_startup": round(res.samples / (res.seconds - res.startup), 2) if res.seconds > res.startup else None,
            "checkpoint": str(run.out)}
