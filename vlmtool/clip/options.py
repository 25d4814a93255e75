"""`vlmtool clip-train`'s options: one frozen dataclass, each field with its default and its
command-line form (core/options.py), light to import (the CLI builds its parameters from it)."""

from __future__ import annotations

from dataclasses import dataclass

from vlmtool.core.options import DEVICE, PRECISION, PROGRESS, WORKERS, option


@dataclass(frozen=True)
class ClipTrainOptions:
    """`vlmtool clip-train`'s options (see its --help)."""

    model: str = option("tiny-clip", "open_clip architecture (e.g. tiny-clip, ViT-B-32).")
    pretrained: str | None = option(None, "Fine-tune from a tag, a checkpoint file or a clip-train folder (default: from scratch).")
    steps: int = option(600, "Optimizer steps in all (a rerun with more steps continues).", min=1, free=True)
    batch_size: int = option(128, "Samples per step on each rank; negatives are gathered from all ranks.",
                             flags=("--batch-size", "-b"), min=2)
    lr: float = option(1e-3, "Peak learning rate (AdamW), reached after --warmup steps, then cosine decay.", min=0.0)
    weight_decay: float = option(0.1, "AdamW weight decay (not applied to gains, biases, the temperature).", min=0.0)
    warmup: int = option(50, "Steps of linear learning-rate warmup.", min=0)
    seed: int = option(0, "Seed of initialisation and data order.")
    workers: int = WORKERS(1)
    cache_mb: int = option(1024, "Keep up to this many MiB of prepared images (on each rank, shared by its loader workers) in memory after "
                           "their first epoch, so later epochs skip decoding and resizing them; the same batches and "
                           "weights (0: decode every epoch).", min=0, free=True)
    save_every: int = option(200, "Save the model and the training state every N steps (and at the end).", min=1, free=True)
    time_limit: float | None = option(None, "Stop (and save) after this many seconds.", min=1.0, free=True)
    device: str = DEVICE()
    precision: str = PRECISION(free=True)
    progress: bool = PROGRESS()
