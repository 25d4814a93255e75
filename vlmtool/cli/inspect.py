"""`vlmtool inspect`."""

from __future__ import annotations

from typing import List, Optional

import typer

from vlmtool.cli._app import INPUTS, JSON, MAX_IMAGE_BYTES, MAX_PIXELS, MAX_TEXT_BYTES, PROGRESS, STRICT, WORKERS, app, emit


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
) -> None:
    """Count samples, fields, image sizes, caption lengths and broken samples by reason."""
    from vlmtool.inspect_shards import InspectOptions, run_inspect

    opts = InspectOptions(max_pixels=max_pixels, max_image_bytes=max_image_bytes, max_text_bytes=max_text_bytes,
                          batch_size=batch_size, workers=workers, strict=strict, progress=progress)
    emit(run_inspect(inputs, out, opts), as_json)
