"""`vlmtool encode`: every option's default and help come from EncodeOptions' fields."""

from __future__ import annotations

from vlmtool.cli._app import INPUTS, JSON, OUT, app, emit, options, param
from vlmtool.encode.options import EncodeOptions as E


@app.command("encode")
def encode_cmd(
    inputs: list[str] = INPUTS,
    out: str = OUT,
    pretrained: str = param(E, "pretrained"),
    model: str | None = param(E, "model"),
    layer: int = param(E, "layer"),
    cls: bool = param(E, "cls"),
    anyres: str | None = param(E, "anyres"),
    frame_budget: int | None = param(E, "frame_budget"),
    select: str = param(E, "select"),
    sample_fps: float = param(E, "sample_fps"),
    pooled: bool = param(E, "pooled"),
    batch_size: int = param(E, "batch_size"),
    workers: int = param(E, "workers"),
    max_pixels: int = param(E, "max_pixels"),
    max_image_bytes: int = param(E, "max_image_bytes"),
    max_text_bytes: int = param(E, "max_text_bytes"),
    device: str = param(E, "device"),
    precision: str = param(E, "precision"),
    decode: str = param(E, "decode"),
    strict: bool = param(E, "strict"),
    as_json: bool = JSON,
    progress: bool = param(E, "progress"),
    executor: str = param(E, "executor"),
    ray_address: str = param(E, "ray_address"),
    ray_workers: int = param(E, "ray_workers"),
    gpus_per_worker: float = param(E, "gpus_per_worker"),
    cpus_per_worker: float = param(E, "cpus_per_worker"),
) -> None:
    """Write the vision tower's patch-token features of every image, AnyRes tile and video frame as feature shards."""
    from vlmtool.encode import run_encode

    emit(run_encode(inputs, out, options(E, locals())), as_json)
