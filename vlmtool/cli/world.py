"""`vlmtool world`: the synthetic shapes world."""

from __future__ import annotations

import typer

from vlmtool.cli._app import JSON, PROGRESS, app, emit


@app.command("world")
def world_cmd(
    out: str = typer.Argument(..., help="Folder to write the shards (00000.tar, ...), videos/ and world.json into."),
    samples: int = typer.Option(64, "--samples", "-n", min=1, help="Number of image-caption samples."),
    shard_size: int = typer.Option(16, "--shard-size", min=1, help="Samples per shard."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same bytes."),
    mismatch: float = typer.Option(0.0, "--mismatch", min=0.0, max=1.0, help="Fraction of samples given another scene's caption."),
    broken: float = typer.Option(0.0, "--broken", min=0.0, max=1.0, help="Fraction of broken samples (every kind the core rejects)."),
    broken_tar: bool = typer.Option(False, "--broken-tar", help="Truncate the last shard mid-file."),
    videos: int = typer.Option(0, "--videos", min=0, help="Short videos with known static and moving segments."),
    sizes: str = typer.Option("varied", "--sizes", help="Image size mix: varied (96 px to 1920x1080, tall, wide) or small (64-160 px)."),
    as_json: bool = JSON,
    progress: bool = PROGRESS,
) -> None:
    """Generate the synthetic shapes world (images, captions, objects, videos, faults)."""
    from vlmtool.world import make_world

    emit(make_world(out, samples, shard_size, seed, mismatch, broken, broken_tar, videos, sizes, progress), as_json)
