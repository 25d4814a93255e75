"""Options as data: a job's options dataclass field carries its default and its command-line
form (flags, help, bounds, metavar), so the CLI builds each Typer parameter from the field
(`cli._app.param`) and a default or a help text is written once.

    batch_size: int = option(64, "Views per forward of the tower.", flags=("--batch-size", "-b"), min=1)
    workers: int = WORKERS(2)

The shared groups (loader workers, --strict, progress, device, precision, decode, the record
caps) are field makers here, used by every job that has them. Light: no torch, no typer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vlmtool.core.samples import DEFAULT_MAX_PIXELS

MiB = 1 << 20


def option(default: Any = None, help: str = "", *, flags: tuple[str, ...] = (), min: float | None = None,  # noqa: A002
           max: float | None = None, metavar: str | None = None, free: bool = False, **field_kw):
    """A dataclass field with its command-line form. `flags` default to `--field-name`; `free`: the
    option may change between a run and its resume (core/job.py, written to the manifest, not compared)."""
    cli = {"help": help, "flags": tuple(flags), "min": min, "max": max, "metavar": metavar}
    return dataclasses.field(default=default, metadata={"cli": cli, "free": free}, **field_kw)


def cli_form(cls, name: str) -> tuple[Any, dict]:
    """(default, command-line form) of field `name` of an options dataclass; flags filled in."""
    f = next((f for f in dataclasses.fields(cls) if f.name == name), None)
    if f is None or "cli" not in f.metadata:
        raise KeyError(f"{cls.__name__}.{name} has no command-line form: declare it with core.options.option()")
    cli = dict(f.metadata["cli"])
    cli["flags"] = cli["flags"] or ("--" + name.replace("_", "-"),)
    return f.default, cli


# ---------------------------------------------------------------------------------- shared groups


def WORKERS(default: int):  # noqa: N802 -- a field maker that reads like the option it makes
    return option(default, "Loader worker processes (0: read in the main process).", flags=("--workers", "-w"), min=0, free=True)


def STRICT():  # noqa: N802
    return option(False, "Stop at the first bad sample instead of counting and skipping it.", free=True)


def PROGRESS():  # noqa: N802
    return option(True, "Show a progress bar on stderr.", flags=("--progress/--no-progress",), free=True)


def DEVICE():  # noqa: N802
    return option("auto", "auto, cpu, cuda or mps (auto: cuda when there is one).", free=True)


def PRECISION(free: bool = False):  # noqa: N802
    return option("auto", "auto, fp32, bf16 or fp16 (auto: bf16 on a CUDA device that has it, else fp32).", free=free)


def DECODE():  # noqa: N802
    return option("cpu", "cpu: loader workers decode and resize; device: workers only read bytes, JPEGs are decoded in batches "
                  "and resized on the model's device (other formats per sample on the CPU).")


def MAX_PIXELS():  # noqa: N802
    return option(DEFAULT_MAX_PIXELS, "Reject images with more pixels (decompression bombs; PIL's own limit).", min=1)


def MAX_IMAGE_BYTES():  # noqa: N802
    return option(64 * MiB, "Reject image members larger than this many bytes.", min=1)


def MAX_TEXT_BYTES():  # noqa: N802
    return option(1 * MiB, "Reject caption and json members larger than this many bytes.", min=1)
