"""`vlmtool export`."""

from __future__ import annotations

from typing import List

import typer

from vlmtool.cli._app import (CPUS_PER_WORKER, EXECUTOR, GPUS_PER_WORKER, JSON, MAX_IMAGE_BYTES, MAX_PIXELS, MAX_TEXT_BYTES, OUT, PROGRESS,
                              RAY_ADDRESS, RAY_WORKERS, app, emit, options)


@app.command("export")
def export_cmd(
    instructions: List[str] = typer.Argument(..., help="instructions.jsonl as synth writes it (LLaVA conversations or chat "
                                             "messages); words after it that are not options are more shards.",
                                             metavar="INSTRUCTIONS"),
    shards: List[str] = typer.Option(..., "--shards", "-s", help="The shards holding the images: paths, patterns, globs, "
                                     "folders, or - for a list on stdin (`--shards d/*.tar` takes every file the shell lists).",
                                     metavar="SHARDS"),
    to: str = typer.Option(..., "--to", "-t", help="llava (JSON list + image folder), hf (datasets Parquet), "
                           "sharegpt (LLaMA-Factory) or wds (webdataset shards)."),
    out: str = OUT,
    max_shard_size: str = typer.Option("500MB", "--max-shard-size", help="hf: start a new Parquet file past this size "
                                       "(like datasets': 500MB, 1GB, 64MiB)."),
    name: str = typer.Option("vlmtool", "--name", help="sharegpt: the dataset's name in dataset_info.json."),
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
    """Join instruction rows to their images in the shards and write them in a trainer's layout."""
    from vlmtool.export import ExportOptions, run_export

    # click gives an option one value: the shell's other words (`--shards d/*.tar`) arrive as arguments
    params = {k: v for k, v in locals().items() if k not in ("instructions", "shards")}
    emit(run_export(instructions[0], [*shards, *instructions[1:]], out, options(ExportOptions, params)), as_json)
