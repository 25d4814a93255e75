"""`vlmtool clip-train` and `vlmtool filter`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from vlmtool.cli._app import (CPUS_PER_WORKER, DECODE, DEVICE, EXECUTOR, GPUS_PER_WORKER, INPUTS, JSON, MAX_IMAGE_BYTES, MAX_PIXELS,
                              MAX_TEXT_BYTES, OUT, PRECISION, PROGRESS, RAY_ADDRESS, RAY_WORKERS, STRICT, WORKERS, app, emit, options)


@app.command("clip-train")
def clip_train_cmd(
    inputs: List[str] = INPUTS,
    out: str = OUT,
    model: str = typer.Option("tiny-clip", "--model", help="open_clip architecture (e.g. tiny-clip, ViT-B-32)."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="Fine-tune from a tag, a checkpoint file or a clip-train folder (default: from scratch)."),
    steps: int = typer.Option(600, "--steps", min=1, help="Optimizer steps in all (a rerun with more steps continues)."),
    batch_size: int = typer.Option(128, "--batch-size", "-b", min=2, help="Samples per step on each rank; negatives are gathered from all ranks."),
    lr: float = typer.Option(1e-3, "--lr", min=0.0, help="Peak learning rate (AdamW), reached after --warmup steps, then cosine decay."),
    weight_decay: float = typer.Option(0.1, "--weight-decay", min=0.0, help="AdamW weight decay (not applied to gains, biases, the temperature)."),
    warmup: int = typer.Option(50, "--warmup", min=0, help="Steps of linear learning-rate warmup."),
    workers: int = typer.Option(1, "--workers", "-w", min=0, help="Loader worker processes (0: read in the main process)."),
    save_every: int = typer.Option(200, "--save-every", min=1, help="Save the model and the training state every N steps (and at the end)."),
    time_limit: Optional[float] = typer.Option(None, "--time-limit", min=1.0, help="Stop (and save) after this many seconds."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation and data order."),
    device: str = DEVICE,
    precision: str = PRECISION,
    as_json: bool = JSON,
    progress: bool = PROGRESS,
) -> None:
    """Train or fine-tune a CLIP with the symmetric InfoNCE loss (DDP under torchrun); rerun to resume."""
    from vlmtool.clip.train import ClipTrainOptions, run_clip_train

    emit(run_clip_train(inputs, out, options(ClipTrainOptions, locals())), as_json)


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
