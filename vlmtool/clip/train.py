"""`vlmtool clip-train`: contrastive training or fine-tuning of an open_clip model on
image-caption shards, with the symmetric InfoNCE loss and a learned temperature.

Logits S_ij = u_i . v_j / tau on l2-normalized embeddings; cross-entropy over rows and over
columns, averaged: open_clip's own ClipLoss. Under torchrun each rank reads its own shards,
the model is wrapped in DDP, and embeddings are gathered across ranks (with gradients) so that
every rank's batch sees all negatives. The output folder is an open_clip model folder
(open_clip_config.json + model.safetensors, loadable as `local-dir:`) plus config.json and
train_state.pt (optimizer, step) for resume.
"""

from __future__ import annotations

import math
import random
import sys
import time
from pathlib import Path

from vlmtool.clip.model import load_clip
from vlmtool.clip.preprocess import ClipPrep, to_model_input
from vlmtool.core.runtime import autocast, dist_info, init_process_group, resolve_device, resolve_precision, seed_everything
from vlmtool.core.records import Reject, iter_samples
from vlmtool.core.samples import SampleError
from vlmtool.core.shards import ShardRef, atomic_path, dumps, expand_inputs, shard_refs, write_json
from vlmtool.errors import UsageError


class TrainStream:
    """Endless shuffled (pixels, caption) samples from this rank's shards; a worker owns whole
    shards, epochs reshuffle shard order, a buffer shuffles samples. Rejects are counted."""

    def __init__(self, shards: list[ShardRef], prep: ClipPrep, seed: int, rank: int, world: int, start_epoch: int = 0, buffer: int = 1000):
        self.shards, self.prep, self.seed, self.rank, self.world = shards, prep, seed, rank, world
        self.start_epoch, self.buffer = start_epoch, buffer

    def __iter__(self):
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        rng = random.Random(hash((self.seed, self.rank, wid)))
        buf: list = []
        epoch = self.start_epoch
        while True:
            order = list(self.shards)
            random.Random(hash((self.seed, epoch))).shuffle(order)
            mine = order[self.rank :: self.world][wid::nw]
            if not mine:  # more workers than this rank's shards: the others carry on
                return
            for ref in mine:
                for s in iter_samples(ref):
                    if isinstance(s, Reject):
                        yield ("reject", s.reason)
                        continue
                    try:
                        item = ("sample", *self.prep.prepare(s))
                    except SampleError as e:
                        yield ("reject", e.reason)
                        continue
                    if len(buf) < self.buffer:
                        buf.append(item)
                        continue
                    i = rng.randrange(len(buf))
                    yield buf[i]
                    buf[i] = item
            epoch += 1
            yield ("epoch", epoch)


def _param_groups(model, weight_decay: float):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in n or "bias" in n or "ln" in n or "norm" in n else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def save_model(out: Path, model, loaded, step: int, args: dict) -> None:
    """open_clip_config.json + model.safetensors (open_clip's local-dir layout) + config.json."""
    import open_clip
    from safetensors.torch import save_file

    cfg = open_clip.get_model_config(loaded.arch) if not loaded.meta.get("model_cfg") else loaded.meta["model_cfg"]
    pp = loaded.preprocess
    oc = {"model_cfg": cfg, "preprocess_cfg": {"size": pp.size, "mean": list(pp.mean), "std": list(pp.std),
                                               "interpolation": pp.interpolation, "resize_mode": pp.resize_mode}}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"step": str(step)})
    write_json(out / "open_clip_config.json", oc)
    write_json(out / "config.json", {"arch": loaded.arch, "model_cfg": cfg, "step": step, "base": loaded.describe(), "args": args})


def run_clip_train(inputs: list[str], out: str, *, model: str = "tiny-clip", pretrained: str | None = None, steps: int = 600,
                   batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 0.1, warmup: int = 50, workers: int = 1,
                   device: str = "auto", precision: str = "auto", seed: int = 0, save_every: int = 200,
                   time_limit: float | None = None, progress: bool = True) -> dict:
    import torch
    from open_clip.loss import ClipLoss
    from tqdm import tqdm

    dist = dist_info()
    dev = resolve_device(device, dist)
    use_dist = init_process_group(dev)
    seed_everything(seed + dist.rank)
    out_p = Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    refs = shard_refs(expand_inputs(inputs))
    if len(refs) < dist.world_size:
        raise UsageError(f"{len(refs)} shard(s) for {dist.world_size} ranks: every rank needs at least one shard")
    resume = (out_p / "train_state.pt").exists() and (out_p / "open_clip_config.json").exists()
    loaded = load_clip(model, str(out_p) if resume else pretrained, device=dev)
    if resume and not loaded.meta.get("model_cfg"):
        raise UsageError(f"{out} has a train_state.pt but no config.json: delete the folder to start over")
    net = loaded.model
    net.train()
    dtype = resolve_precision(precision, dev)
    opt = torch.optim.AdamW(_param_groups(net, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    step = 0
    if resume:
        st = torch.load(out_p / "train_state.pt", map_location="cpu", weights_only=True)
        opt.load_state_dict(st["optimizer"])
        step = int(st["step"])
        print(f"[clip-train] resuming {out} at step {step}", file=sys.stderr)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16 and dev.type == "cuda")
    ddp = torch.nn.parallel.DistributedDataParallel(net) if use_dist else net
    loss_fn = ClipLoss(local_loss=False, gather_with_grad=use_dist, cache_labels=True, rank=dist.rank, world_size=dist.world_size)
    prep = ClipPrep(loaded.preprocess, loaded.tokenizer, "fast")
    stream = TrainStream(refs, prep, seed, dist.rank, dist.world_size, start_epoch=step)
    from torch.utils.data import DataLoader, IterableDataset

    class _DS(IterableDataset):
        def __iter__(self):
            return iter(stream)

    loader = iter(DataLoader(_DS(), batch_size=None, num_workers=workers, prefetch_factor=8 if workers else None,
                             persistent_workers=False) if workers else stream)
    args = {"inputs": inputs, "model": model, "pretrained": pretrained, "steps": steps, "batch_size": batch_size, "lr": lr,
            "weight_decay": weight_decay, "warmup": warmup, "seed": seed, "world_size": dist.world_size}
    rejected: dict[str, int] = {}
    epochs = 0
    losses: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(total=steps, initial=step, desc="clip-train", unit="step", file=sys.stderr, disable=not progress or not dist.is_main)
    stopped_early = False
    while step < steps:
        px, caps = [], []
        while len(px) < batch_size:
            item = next(loader)
            kind = item[0]
            if kind == "sample":
                px.append(item[1])
                caps.append(item[2])
            elif kind == "reject":
                rejected[item[1]] = rejected.get(item[1], 0) + 1
            else:  # "epoch"
                epochs += 1
        images, tokens = prep.collate([(p.numpy() if hasattr(p, "numpy") else p, c) for p, c in zip(px, caps)])
        x = to_model_input(images, loaded.preprocess, dev)
        tokens = tokens.to(dev)
        cur_lr = lr * (step + 1) / warmup if step < warmup else 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        for g in opt.param_groups:
            g["lr"] = cur_lr
        with autocast(dev, dtype):
            img_f, txt_f, scale = ddp(x, tokens)
            loss = loss_fn(img_f, txt_f, scale)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        with torch.no_grad():  # CLIP clamps the learned temperature: logit scale <= 100
            net.logit_scale.clamp_(0, math.log(100))
        step += 1
        losses.append(float(loss.detach()))
        bar.update()
        bar.set_postfix(loss=f"{losses[-1]:.3f}", T=f"{1 / float(scale.detach()):.4f}", refresh=False)
        timed_out = time_limit is not None and time.perf_counter() - t0 > time_limit
        if dist.is_main and (step % save_every == 0 or step == steps or timed_out):
            save_model(out_p, net, loaded, step, args)
            with atomic_path(out_p / "train_state.pt") as tmp:
                torch.save({"optimizer": opt.state_dict(), "step": step}, tmp)
        if timed_out:
            stopped_early = True
            break
    bar.close()
    if use_dist:
        import torch.distributed as td

        td.barrier()
    summary = {"job": "clip-train", "out": str(out_p), "steps": step, "target_steps": steps, "stopped_early": stopped_early,
               "epochs_seen": epochs, "loss_first": round(losses[0], 4) if losses else None,
               "loss_last": round(sum(losses[-20:]) / len(losses[-20:]), 4) if losses else None,
               "temperature": round(1 / float(net.logit_scale.detach().exp()), 5), "rejected": rejected, "rank": dist.rank,
               "world_size": dist.world_size, "seconds": round(time.perf_counter() - t0, 2)}
    if dist.is_main:
        (out_p / "train_log.jsonl").open("ab").write(dumps(summary) + b"\n")
    return summary
