"""`vlmtool export`: every option's default and help come from ExportOptions' fields (the instructions
and --shards are the command's own: run_export's arguments)."""

from __future__ import annotations

from typing import List

import typer

from vlmtool.cli._app import JSON, OUT, app, emit, options, param
from vlmtool.export.job import ExportOptions as X


@app.command("export")
def export_cmd(
    instructions: List[str] = typer.Argument(..., help="instructions.jsonl as synth writes it (LLaVA conversations or chat "
                                             "messages); words after it that are not options are more shards.",
                                             metavar="INSTRUCTIONS"),
    shards: List[str] = typer.Option(..., "--shards", "-s", help="The shards holding the images: paths, patterns, globs, "
                                     "folders, or - for a list on stdin (`--shards d/*.tar` takes every file the shell lists).",
                                     metavar="SHARDS"),
    to: str = param(X, "to", default=...),
    out: str = OUT,
    max_shard_size: str = param(X, "max_shard_size"),
    name: str = param(X, "name"),
    max_pixels: int = param(X, "max_pixels"),
    max_image_bytes: int = param(X, "max_image_bytes"),
    max_text_bytes: int = param(X, "max_text_bytes"),
    as_json: bool = JSON,
    progress: bool = param(X, "progress"),
    executor: str = param(X, "executor"),
    ray_address: str = param(X, "ray_address"),
    ray_workers: int = param(X, "ray_workers"),
    gpus_per_worker: float = param(X, "gpus_per_worker"),
    cpus_per_worker: float = param(X, "cpus_per_worker"),
) -> None:
    """Join instruction rows to their images in the shards and write them in a trainer's layout."""
    from vlmtool.export import run_export

    # click gives an option one value: the shell's other words (`--shards d/*.tar`) arrive as arguments
    params = {k: v for k, v in locals().items() if k not in ("instructions", "shards")}
    emit(run_export(instructions[0], [*shards, *instructions[1:]], out, options(X, params)), as_json)
