"""`vlmtool inspect`."""

from __future__ import annotations

from typing import List, Optional

import typer

from vlmtool.cli._app import (CPUS_PER_WORKER, EXECUTOR, GPUS_PER_WORKER, INPUTS, JSON, MAX_IMAGE_BYTES, MAX_PIXELS, MAX_TEXT_BYTES,
                              PROGRESS, RAY_ADDRESS, RAY_WORKERS, STRICT, WORKERS, app, emit, options)


@app.command("inspect")
def inspect_cmd(
    inputs: List[str] = INPUTS,
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Job folder, for resume and manifest.json (default: a throwaway folder).", metavar="DIR"),
    workers: int = WORKERS,
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1, help="Samples per batch handed from the loader workers."),
    strict: bool = STRICT,
    max_pixels: int = MAX_PIXELS,
    max_image_bytes: int = MAX_IMAGE_BYTES,
    max_text_bytes: int = MAX_TEXT_BYTES,
    as_json: bool = JSON,
    progress: bool = PROGRESS,
    executor: str = EXECUTOR,
    ray_address: str = RAY_ADDRESS,
    ray_workers: int = RAY_WORKERS,
    gpus_per_worker: float = GPUS_PER_WORKER,
    cpus_per_worker: float = CPUS_PER_WORKER,
) -> None:
    """Count samples, fields, image sizes, caption lengths and broken samples by reason."""
    from vlmtool.inspect_shards import InspectOptions, run_inspect

    opts = options(InspectOptions, locals())
    emit(run_inspect(inputs, out, opts), as_json)
