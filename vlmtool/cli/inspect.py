"""`vlmtool inspect`: every option's default and help come from InspectOptions' fields (--out is
the command's own: optional here, unlike the other jobs')."""

from __future__ import annotations

from typing import List, Optional

import typer

from vlmtool.cli._app import INPUTS, JSON, app, emit, options, param
from vlmtool.inspect_shards import InspectOptions as N


@app.command("inspect")
def inspect_cmd(
    inputs: List[str] = INPUTS,
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Job folder, for resume and manifest.json (default: a throwaway folder).", metavar="DIR"),
    workers: int = param(N, "workers"),
    batch_size: int = param(N, "batch_size"),
    strict: bool = param(N, "strict"),
    max_pixels: int = param(N, "max_pixels"),
    max_image_bytes: int = param(N, "max_image_bytes"),
    max_text_bytes: int = param(N, "max_text_bytes"),
    as_json: bool = JSON,
    progress: bool = param(N, "progress"),
    executor: str = param(N, "executor"),
    ray_address: str = param(N, "ray_address"),
    ray_workers: int = param(N, "ray_workers"),
    gpus_per_worker: float = param(N, "gpus_per_worker"),
    cpus_per_worker: float = param(N, "cpus_per_worker"),
) -> None:
    """Count samples, fields, image sizes, caption lengths and broken samples by reason."""
    from vlmtool.inspect_shards import run_inspect

    opts = options(N, locals())
    emit(run_inspect(inputs, out, opts), as_json)
