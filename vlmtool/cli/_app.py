"""The Typer app, the options every job shares, and how a summary is printed.

stdout carries data only (the --json summary, JSONL rows, the table a command was asked for);
bars and logs go to stderr. A user error prints one line and exits 2 (usage) or 1 (job failed).
Heavy modules (torch, open_clip, av) are imported inside the commands that use them.
"""

from __future__ import annotations

import dataclasses
import sys

import typer
import typer.core

from vlmtool import __version__
from vlmtool.core.executors import ExecutorOptions
from vlmtool.core.options import DECODE as DECODE_FIELD
from vlmtool.core.options import DEVICE as DEVICE_FIELD
from vlmtool.core.options import PRECISION as PRECISION_FIELD
from vlmtool.core.options import PROGRESS as PROGRESS_FIELD
from vlmtool.core.options import STRICT as STRICT_FIELD
from vlmtool.core.options import WORKERS as WORKERS_FIELD
from vlmtool.core.records import ReadOptions

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

def param(cls, name: str, default=dataclasses.MISSING):
    """The Typer option of field `name` of an options dataclass: its default and its command-line
    form (flags, help, bounds, metavar) as the field declares them (core/options.py), so a
    command names its options and writes no default or help of its own. `default`: the
    command-line default where it differs from the field's: `...` where the command requires the
    option, or a value of the option's own type where the command turns it into the field's (a
    comma-separated string, a repeatable option, made into a tuple)."""
    from vlmtool.core.options import cli_form

    field_default, cli = cli_form(cls, name)
    default = field_default if default is dataclasses.MISSING else default
    bounds = {k: cli[k] for k in ("min", "max", "metavar") if cli[k] is not None}
    return typer.Option(... if default is dataclasses.MISSING else default, *cli["flags"], help=cli["help"], **bounds)


@dataclasses.dataclass(frozen=True)
class Shared:
    """The shared option groups with their usual defaults, for the commands that take them as
    they are (a job whose default differs declares the field itself)."""

    workers: int = WORKERS_FIELD(2)
    strict: bool = STRICT_FIELD()
    progress: bool = PROGRESS_FIELD()
    device: str = DEVICE_FIELD()
    precision: str = PRECISION_FIELD()
    decode: str = DECODE_FIELD()


OUT = typer.Option(..., "--out", "-o", help="Output folder; rerunning with the same folder resumes.", metavar="DIR")
JSON = typer.Option(False, "--json", help="Print the summary as one JSON object on stdout.")
WORKERS, STRICT, PROGRESS = param(Shared, "workers"), param(Shared, "strict"), param(Shared, "progress")
DEVICE, PRECISION, DECODE = param(Shared, "device"), param(Shared, "precision"), param(Shared, "decode")
# Where the shards run (core/executors.py; docs/cluster.md, "Ray").
EXECUTOR, RAY_ADDRESS, RAY_WORKERS = (param(ExecutorOptions, n) for n in ("executor", "ray_address", "ray_workers"))
GPUS_PER_WORKER, CPUS_PER_WORKER = param(ExecutorOptions, "gpus_per_worker"), param(ExecutorOptions, "cpus_per_worker")
# The caps on what a record may hold (core/records.py)
MAX_PIXELS, MAX_IMAGE_BYTES, MAX_TEXT_BYTES = (param(ReadOptions, n) for n in ("max_pixels", "max_image_bytes", "max_text_bytes"))
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


def options(cls, params: dict):
    """A job's options object from a command's parameters: the dataclass's fields are taken by
    name, so each option is spelled once (the Typer parameter and the field share the name)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in params.items() if k in names})
