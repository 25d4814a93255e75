"""The Typer app, the options every job shares, and how a summary is printed.

stdout carries data only (the --json summary, JSONL rows, the table a command was asked for);
bars and logs go to stderr. A user error prints one line and exits 2 (usage) or 1 (job failed).
Heavy modules (torch, open_clip, av) are imported inside the commands that use them.
"""

from __future__ import annotations

import sys

import typer

from vlmtool import __version__

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
OUT = typer.Option(..., "--out", "-o", help="Output folder; rerunning with the same folder resumes.", metavar="DIR")
WORKERS = typer.Option(2, "--workers", "-w", min=0, help="Loader worker processes (0: read in the main process).")
STRICT = typer.Option(False, "--strict", help="Stop at the first bad sample instead of counting and skipping it.")
JSON = typer.Option(False, "--json", help="Print the summary as one JSON object on stdout.")
PROGRESS = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on stderr.")
MAX_PIXELS = typer.Option(89_478_485, "--max-pixels", min=1, help="Reject images with more pixels (decompression bombs; PIL's own limit).")
MAX_IMAGE_BYTES = typer.Option(64 << 20, "--max-image-bytes", min=1, help="Reject image members larger than this many bytes.")
MAX_TEXT_BYTES = typer.Option(1 << 20, "--max-text-bytes", min=1, help="Reject caption and json members larger than this many bytes.")
INPUTS = typer.Argument(..., help="Shards: paths, brace patterns ('d/{00000..00009}.tar'), globs, folders, or - for a list on stdin.",
                        metavar="INPUTS")


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


DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda or mps (auto: cuda when there is one).")
PRECISION = typer.Option("auto", "--precision", help="auto, fp32, bf16 or fp16 (auto: bf16 on a CUDA device that has it, else fp32).")


def options(cls, params: dict):
    """A job's options object from a command's parameters: the dataclass's fields are taken by
    name, so each option is spelled once (the Typer parameter and the field share the name)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in params.items() if k in names})
