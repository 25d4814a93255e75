"""`vlmtool clip-train` and `vlmtool filter`: every option's default and help come from the options' fields."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

from vlmtool.cli._app import INPUTS, JSON, OUT, app, emit, options, param
from vlmtool.clip.options import ClipTrainOptions as C
from vlmtool.filter import FilterOptions as F


@app.command("clip-train")
def clip_train_cmd(
    inputs: List[str] = INPUTS,
    out: str = OUT,
    model: str = param(C, "model"),
    pretrained: Optional[str] = param(C, "pretrained"),
    steps: int = param(C, "steps"),
    batch_size: int = param(C, "batch_size"),
    lr: float = param(C, "lr"),
    weight_decay: float = param(C, "weight_decay"),
    warmup: int = param(C, "warmup"),
    workers: int = param(C, "workers"),
    cache_mb: int = param(C, "cache_mb"),
    save_every: int = param(C, "save_every"),
    time_limit: Optional[float] = param(C, "time_limit"),
    seed: int = param(C, "seed"),
    device: str = param(C, "device"),
    precision: str = param(C, "precision"),
    as_json: bool = JSON,
    progress: bool = param(C, "progress"),
) -> None:
    """Train or fine-tune a CLIP with the symmetric InfoNCE loss (DDP under torchrun); rerun to resume."""
    from vlmtool.clip.train import run_clip_train

    emit(run_clip_train(inputs, out, options(C, locals())), as_json)


@app.command("filter")
def filter_cmd(
    inputs: List[str] = INPUTS,
    out: str = OUT,
    pretrained: str = param(F, "pretrained"),
    model: Optional[str] = param(F, "model"),
    min_score: Optional[float] = param(F, "min_score"),
    keep_fraction: Optional[float] = param(F, "keep_fraction"),
    batch_size: int = param(F, "batch_size"),
    workers: int = param(F, "workers"),
    preprocess: str = param(F, "preprocess"),
    min_side: int = param(F, "min_side"),
    max_aspect: float = param(F, "max_aspect"),
    min_words: int = param(F, "min_words"),
    min_chars: int = param(F, "min_chars"),
    max_pixels: int = param(F, "max_pixels"),
    max_image_bytes: int = param(F, "max_image_bytes"),
    max_text_bytes: int = param(F, "max_text_bytes"),
    plot: bool = param(F, "plot"),
    device: str = param(F, "device"),
    precision: str = param(F, "precision"),
    decode: str = param(F, "decode"),
    strict: bool = param(F, "strict"),
    wait_timeout: Optional[float] = param(F, "wait_timeout"),
    as_json: bool = JSON,
    progress: bool = param(F, "progress"),
    executor: str = param(F, "executor"),
    ray_address: str = param(F, "ray_address"),
    ray_workers: int = param(F, "ray_workers"),
    gpus_per_worker: float = param(F, "gpus_per_worker"),
    cpus_per_worker: float = param(F, "cpus_per_worker"),
) -> None:
    """Score image-caption pairs with CLIP and keep those that match (threshold or global top fraction)."""
    from vlmtool.filter import run_filter

    summary = run_filter(inputs, out, options(F, locals()))
    emit(summary, as_json)
    report = Path(out) / "report.txt"
    if not as_json and summary.get("complete") and report.exists():
        print("score histogram:\n" + report.read_text(), file=sys.stderr)
