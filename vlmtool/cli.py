"""The vlmtool command line: one small function per subcommand, each calling one job.

stdout carries data only (the --json summary, JSONL rows, the table a command was asked for);
bars and logs go to stderr. A user error prints one line and exits 2 (usage) or 1 (job failed).
Heavy modules (torch, open_clip, av) are imported inside the commands that use them.
"""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from vlmtool import __version__
from vlmtool.errors import UsageError, VlmtoolError

app = typer.Typer(
    name="vlmtool",
    help="Data tooling for vision-language models: shapes world, shard inspection, CLIP filtering, "
    "instruction synthesis and visual-token budgets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Options shared by the shard jobs.
OUT = typer.Option(..., "--out", "-o", help="Output folder; rerunning with the same folder resumes.")
WORKERS = typer.Option(2, "--workers", "-w", min=0, help="Loader worker processes (0: read in the main process).")
STRICT = typer.Option(False, "--strict", help="Stop at the first bad sample instead of counting and skipping it.")
JSON = typer.Option(False, "--json", help="Print the summary as one JSON object on stdout.")
PROGRESS = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on stderr.")
MAX_PIXELS = typer.Option(None, "--max-pixels", min=1, help="Reject images with more pixels (default: PIL's bomb limit, 89,478,485).")


def emit(summary: dict, as_json: bool) -> None:
    """The job summary: JSON on stdout for pipelines, or readable lines on stderr for people."""
    if as_json:
        from vlmtool.core.shards import dumps

        sys.stdout.buffer.write(dumps(summary) + b"\n")
        sys.stdout.flush()
        return

    def lines(obj, indent=0):
        for k, v in obj.items():
            if isinstance(v, dict) and v and not all(isinstance(x, (int, float, str, type(None))) for x in v.values()):
                yield " " * indent + f"{k}:"
                yield from lines(v, indent + 2)
            elif isinstance(v, dict):
                yield " " * indent + f"{k}: " + (", ".join(f"{a}={b}" for a, b in v.items()) or "-")
            else:
                yield " " * indent + f"{k}: {v}"

    for line in lines(summary):
        print(line, file=sys.stderr)


def _version(value: bool) -> None:
    if value:
        print(f"vlmtool {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    pass


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


@app.command("demo")
def demo_cmd(
    out: str = typer.Option("vlmtool-demo", "--out", "-o", help="Folder for the demo's world and job outputs."),
    samples: int = typer.Option(256, "--samples", "-n", min=16, help="Size of the shapes world."),
    as_json: bool = JSON,
    progress: bool = PROGRESS,
) -> None:
    """Run the pipeline on the bundled shapes world: make it, inspect it, and the jobs after."""
    from vlmtool.demo import run_demo

    emit(run_demo(out, samples=samples, progress=progress), as_json)


def main() -> None:
    try:
        app(prog_name="vlmtool")
    except VlmtoolError as e:
        print(f"vlmtool: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except BrokenPipeError:  # `vlmtool ... | head`
        sys.stderr.close()
        sys.exit(0)


__all__ = ["app", "main", "UsageError"]
