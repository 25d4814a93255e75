"""`vlmtool encode`."""

from __future__ import annotations

import typer

from vlmtool.cli._app import (
    CPUS_PER_WORKER,
    DECODE,
    DEVICE,
    EXECUTOR,
    GPUS_PER_WORKER,
    INPUTS,
    JSON,
    MAX_IMAGE_BYTES,
    MAX_PIXELS,
    MAX_TEXT_BYTES,
    OUT,
    PRECISION,
    PROGRESS,
    RAY_ADDRESS,
    RAY_WORKERS,
    STRICT,
    WORKERS,
    app,
    emit,
    options,
)


@app.command("encode")
def encode_cmd(
    inputs: list[str] = INPUTS,
    out: str = OUT,
    pretrained: str = typer.Option(..., "--pretrained", help="A clip-train folder, a checkpoint file, or an open_clip pretrained tag (with --model); 'random' for random weights (tests only)."),
    model: str | None = typer.Option(None, "--model", help="open_clip architecture, e.g. ViT-L-14-336 (not needed with a clip-train folder)."),
    layer: int = typer.Option(-2, "--layer", help="Block whose output is written: -2 the penultimate (LLaVA's), -1 the last (a ResNet tower: its stages, -2 is layer3)."),
    cls: bool = typer.Option(False, "--cls", help="Keep the class token as the first row of each view."),
    anyres: str | None = typer.Option(None, "--anyres", help="Tile images by a budget preset's plan at the tower's size: llava-next (base + tiles, row newlines) or internvl2.5 (tiles + thumbnail)."),
    frame_budget: int | None = typer.Option(None, "--frame-budget", help="Videos: token rows per video; frames = floor(B / rows per frame) (default: 8 frames)."),
    select: str = typer.Option("uniform", "--select", help="Videos: which frames, uniform, fps (at most --sample-fps a second) or content (where the picture changes)."),
    sample_fps: float = typer.Option(1.0, "--sample-fps", help="Videos with --select fps: frames a second at most."),
    pooled: bool = typer.Option(False, "--pooled", help="Also write KEY.pooled.npy, the normalized image embedding."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1, help="Views per forward of the tower."),
    workers: int = WORKERS,
    max_pixels: int = MAX_PIXELS,
    max_image_bytes: int = MAX_IMAGE_BYTES,
    max_text_bytes: int = MAX_TEXT_BYTES,
    device: str = DEVICE,
    precision: str = PRECISION,
    decode: str = DECODE,
    strict: bool = STRICT,
    as_json: bool = JSON,
    progress: bool = PROGRESS,
    executor: str = EXECUTOR,
    ray_address: str = RAY_ADDRESS,
    ray_workers: int = RAY_WORKERS,
    gpus_per_worker: float = GPUS_PER_WORKER,
    cpus_per_worker: float = CPUS_PER_WORKER,
) -> None:
    """Write the vision tower's patch-token features of every image, AnyRes tile and video frame as feature shards."""
    from vlmtool.encode import EncodeOptions, run_encode

    emit(run_encode(inputs, out, options(EncodeOptions, locals())), as_json)
