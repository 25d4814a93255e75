"""The Typer app, the options every job shares, and how a summary is printed.

stdout carries data only (the --json summary, JSONL rows, the table a command was asked for);
bars and logs go to stderr. A user error prints one line and exits 2 (usage) or 1 (job failed).
Heavy modules (torch, open_clip, av) are imported inside the commands that use them.
"""

from __future__ import annotations

import sys

import typer
import typer.core

from vlmtool import __version__

# Typer prints an argument's Python type beside its name in --help (`INPUTS <list[str]>`); the help
# text already says what an argument takes, so the type name is left out.
# Options show click's metavar (TEXT, INTEGER, FLOAT, DIR) instead of `<list[str]>`.
typer.core.TyperArgument.display_type_rich = lambda self, ctx: None  # type: ignore[method-assign]


def _usage_name(self) -> str:
    """An argument on the usage line as click and man pages write it: `INPUTS...` when required,
    `[INPUTS]...` when not (Typer 0.29 writes `{INPUTS}...`, which reads as a literal brace)."""
    name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
    return name + ("..." if self.nargs != 1 else "")


if hasattr(typer.core.TyperArgument, "_usage_display_name"):
    typer.core.TyperArgument._usage_display_name = _usage_name  # type: ignore[method-assign]
_TYPE_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "bool": None}
_option_type = typer.core.TyperOption.display_type_rich


def _option_metavar(self, ctx):
    shown = _option_type(self, ctx)
    if not shown or not shown.startswith("<"):
        return shown
    name = shown.strip("<>").removeprefix("list[").rstrip("]")
    return _TYPE_NAMES.get(name, name.upper())


typer.core.TyperOption.display_type_rich = _option_metavar  # type: ignore[method-assign]

app = typer.Typer(
    name="vlmtool",
    help="Data tooling for vision-language models: make and inspect image-caption shards, train a CLIP and filter with it, "
    "synthesize instruction data, count visual tokens, encode features, train, infer and evaluate a LLaVA-style model, "
    "and export data and checkpoints to the tools people train and serve with. `vlmtool demo` runs the whole pipeline.",
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
# Where the shards run (core/executors.py; docs/cluster.md, "Ray").
EXECUTOR = typer.Option("local", "--executor", help="local (this process, or the torchrun/SLURM ranks) or ray (a pool of Ray actors; "
                        "pip install 'vlmtool[ray]').")
RAY_ADDRESS = typer.Option("auto", "--ray-address", help="The Ray cluster (auto: RAY_ADDRESS or the cluster on this machine, "
                           "else a local Ray started for the job).")
RAY_WORKERS = typer.Option(1, "--ray-workers", min=1, help="Ray actors, each loading the model once and taking shard after shard "
                           "(--workers stays the loader processes inside each).")
GPUS_PER_WORKER = typer.Option(0.0, "--gpus-per-worker", min=0.0, help="GPUs per Ray actor; a fraction (0.25) shares one GPU "
                               "between several actors.")
CPUS_PER_WORKER = typer.Option(1.0, "--cpus-per-worker", min=0.0, help="CPUs Ray reserves per actor (count its loader workers).")
MAX_PIXELS = typer.Option(89_478_485, "--max-pixels", min=1, help="Reject images with more pixels (decompression bombs; PIL's own limit).")
MAX_IMAGE_BYTES = typer.Option(64 << 20, "--max-image-bytes", min=1, help="Reject image members larger than this many bytes.")
MAX_TEXT_BYTES = typer.Option(1 << 20, "--max-text-bytes", min=1, help="Reject caption and json members larger than this many bytes.")
INPUTS = typer.Argument(..., help="Shards: paths, brace patterns ('d/{00000..00009}.tar'), globs, folders, or - for a list on stdin.",
                        metavar="INPUTS")


def human(value) -> str:
    """A value as a person reads it in a summary: no Python reprs."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        shown = ", ".join(human(v) for v in value[:8])
        return (shown + f", ... ({len(value)} in all)") if len(value) > 8 else (shown or "-")
    if isinstance(value, dict):
        return ", ".join(f"{k}={human(v)}" for k, v in value.items()) or "-"
    return str(value)


def summary_lines(obj: dict, indent: int = 0):
    """The summary as indented `key: value` lines; nested dicts of dicts become sections."""
    for k, v in obj.items():
        if isinstance(v, dict) and v and any(isinstance(x, (dict, list)) for x in v.values()):
            yield " " * indent + f"{k}:"
            yield from summary_lines(v, indent + 2)
        else:
            yield " " * indent + f"{k}: {human(v)}"


def emit(summary: dict, as_json: bool, text: str | None = None) -> None:
    """The job's result on stdout: one JSON object for pipelines (--json), else for people the
    `text` given (a table) or the summary as `key: value` lines. Progress and logs stay on stderr,
    so `vlmtool JOB ... > result.txt` holds the result and nothing else."""
    if as_json:
        from vlmtool.core.shards import dumps

        sys.stdout.buffer.write(dumps(summary) + b"\n")
        sys.stdout.flush()
        return
    print(text if text is not None else "\n".join(summary_lines(summary)), flush=True)


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
DECODE = typer.Option("cpu", "--decode", help="cpu: loader workers decode and resize; device: workers only read bytes, JPEGs are "
                      "decoded in batches and resized on the model's device (other formats per sample on the CPU).")


def options(cls, params: dict):
    """A job's options object from a command's parameters: the dataclass's fields are taken by
    name, so each option is spelled once (the Typer parameter and the field share the name)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in params.items() if k in names})
