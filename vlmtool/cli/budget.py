"""`vlmtool budget`: parse the options (each default and help from BudgetOptions' fields), build
BudgetOptions, call report, print."""

from __future__ import annotations

import sys

import typer

from vlmtool.budget.report import BudgetOptions as B
from vlmtool.cli._app import app, options, param

# The argument as a module-level singleton (ruff B008).
INPUTS = typer.Argument(None, metavar="INPUT", help="Images, folders, webdataset shards (brace patterns, globs, pipe:/URLs), videos, audio, or - for names on stdin. Leave out with --size or --seconds.")


@app.command("budget")
def budget_cmd(
    inputs: list[str] | None = INPUTS,
    size: list[str] | None = param(B, "size", default=None),
    model: str = param(B, "model"),
    set: list[str] | None = param(B, "set", default=None),
    frames: int | None = param(B, "frames"),
    context: int | None = param(B, "context"),
    reserved: int = param(B, "reserved"),
    video_text: bool = param(B, "video_text"),
    duration: float | None = param(B, "duration"),
    fps: float | None = param(B, "fps"),
    select: str = param(B, "select"),
    sample_fps: float | None = param(B, "sample_fps"),
    temporal_pool: int = param(B, "temporal_pool"),
    seconds: float | None = param(B, "seconds"),
    draw: str | None = param(B, "draw"),
    kv_layers: int | None = param(B, "kv_layers"),
    kv_heads: int | None = param(B, "kv_heads"),
    head_dim: int | None = param(B, "head_dim"),
    kv_dtype: str = param(B, "kv_dtype"),
    price_per_mtok: float | None = param(B, "price_per_mtok"),
    max_image_pixels: int = param(B, "max_image_pixels"),
    max_frames: int = param(B, "max_frames"),
    max_parts: int = param(B, "max_parts"),
    rows: bool = param(B, "rows"),
    json: bool = param(B, "json"),
    list: bool = param(B, "list"),
    progress: bool = param(B, "progress"),
) -> None:
    """Exact visual- and audio-token counts per model, AnyRes tiling plans and video frame budgets."""
    given = dict(locals())  # every option above, by its own name
    from vlmtool.budget.sections import report
    from vlmtool.errors import JobFailed

    result = report(options(B, {k: v for k, v in given.items() if v is not None}), sys.stdout.buffer)  # None: the field's default
    for line in result.log:
        print(line, file=sys.stderr)
    if result.failed:
        raise JobFailed(result.failed)
