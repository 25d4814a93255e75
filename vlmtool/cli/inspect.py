"""`vlmtool inspect`."""

from __future__ import annotations

from typing import List, Optional

import typer

from vlmtool.cli._app import JSON, MAX_PIXELS, PROGRESS, STRICT, WORKERS, app, emit


@app.command("inspect")
def inspect_cmd(
    inputs: List[str] = typer.Argument(..., help="Shards: paths, brace patterns ('d/{00000..00009}.tar'), globs, folders, or - for a list on stdin."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Job folder, for resume and manifest.json (default: a throwaway folder)."),
    workers: int = WORKERS,
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1),
    strict: bool = STRICT,
    max_pixels: Optional[int] = MAX_PIXELS,
    as_json: bool = JSON,
    progress: bool = PROGRESS,
) -> None:
    """Count samples, fields, image sizes, caption lengths and broken samples by reason."""
    from vlmtool.inspect_shards import run_inspect

    emit(run_inspect(inputs, out, workers=workers, batch_size=batch_size, strict=strict, max_pixels=max_pixels, progress=progress), as_json)
