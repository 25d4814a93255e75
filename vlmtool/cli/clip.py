"""`vlmtool clip-train` and `vlmtool filter`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from vlmtool.cli._app import (CPUS_PER_WORKER, DECODE, DEVICE, EXECUTOR, GPUS_PER_WORKER, INPUTS, JSON, MAX_IMAGE_BYTES, MAX_PIXELS,
                              MAX_TEXT_BYTES, OUT, PRECISION, PROGRESS, RAY_ADDRESS, RAY_WORKERS, STRICT, WORKERS, app, emit, options, param)
from vlmtool.clip.options import ClipTrainOptions as C


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
    pretrained: str = typer.Option(..., "--pretrained", help="A clip-train folder, a checkpoint file, or an open_clip pretrained tag (e.g. openai, with --model); 'random' for random weights (speed tests only)."),
    model: Optional[str] = typer.Option(None, "--model", help="open_clip architecture, e.g. ViT-B-32 (not needed with a clip-train folder)."),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="Keep pairs with cosine similarity >= X (LAION used 0.28 with ViT-B/32)."),
    keep_fraction: Optional[float] = typer.Option(None, "--keep-fraction", help="Keep the global top fraction F of valid pairs, over all shards and ranks."),
    batch_size: int = typer.Option(256, "--batch-size", "-b", min=1, help="Samples per model batch."),
    workers: int = WORKERS,
    preprocess: str = typer.Option("fast", "--preprocess", help="fast (JPEG draft decode, one resize, uint8 normalized on the device) or exact (open_clip's transform)."),
    min_side: int = typer.Option(0, "--min-side", min=0, help="Pre-filter: reject images whose shorter side is below this."),
    max_aspect: float = typer.Option(0.0, "--max-aspect", min=0.0, help="Pre-filter: reject images more elongated than this ratio (0: off)."),
    min_words: int = typer.Option(0, "--min-words", min=0, help="Pre-filter: reject captions with fewer words."),
    min_chars: int = typer.Option(0, "--min-chars", min=0, help="Pre-filter: reject captions with fewer characters."),
    max_pixels: int = MAX_PIXELS,
    max_image_bytes: int = MAX_IMAGE_BYTES,
    max_text_bytes: int = MAX_TEXT_BYTES,
    plot: bool = typer.Option(False, "--plot", help="Also draw the score histogram to OUT/report.png (needs matplotlib)."),
    device: str = DEVICE,
    precision: str = PRECISION,
    decode: str = DECODE,
    strict: bool = STRICT,
    wait_timeout: Optional[float] = typer.Option(None, "--wait-timeout", help="Seconds to wait for other ranks' scores before giving up."),
    as_json: bool = JSON,
    progress: bool = PROGRESS,
    executor: str = EXECUTOR,
    ray_address: str = RAY_ADDRESS,
    ray_workers: int = RAY_WORKERS,
    gpus_per_worker: float = GPUS_PER_WORKER,
    cpus_per_worker: float = CPUS_PER_WORKER,
) -> None:
    """Score image-caption pairs with CLIP and keep those that match (threshold or global top fraction)."""
    from vlmtool.filter import FilterOptions, run_filter

    summary = run_filter(inputs, out, options(FilterOptions, locals()))
    emit(summary, as_json)
    report = Path(out) / "report.txt"
    if not as_json and summary.get("complete") and report.exists():
        print("score histogram:\n" + report.read_text(), file=sys.stderr)
