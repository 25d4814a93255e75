"""`vlmtool eval pope|swap|chair|all`: object-hallucination evals of one or more checkpoints. The
options' defaults and help come from EvalOptions' fields; --checkpoint, --blind, --questions-only
and --out are the command's own (they choose what runs, not how)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from vlmtool.cli._app import JSON, app, emit, options, param
from vlmtool.evals.run import EvalOptions as E
from vlmtool.evals.tasks import commands

eval_app = typer.Typer(help="Does the model look at the pixels? POPE, swap, blind and CHAIR for checkpoints.",
                       no_args_is_help=True, rich_markup_mode=None)
app.add_typer(eval_app, name="eval")

def _options(tasks: tuple[str, ...], p: dict):
    if not p["blind"]:
        tasks = tuple(t for t in tasks if t != "blind")
    settings = tuple(s.strip() for s in p["settings"].split(",") if s.strip())
    return options(E, {**p, "tasks": tasks, "settings": settings, "questions": tuple(p["questions"] or ())})


def _run(tasks: tuple[str, ...], p: dict) -> None:
    from vlmtool.errors import UsageError
    from vlmtool.evals import compare, evaluate, write_probes
    from vlmtool.evals.report import comparison_table, table

    opts, inputs = _options(tasks, p), list(p["inputs"] or [])
    if p["questions_only"]:
        if not p["out"]:
            raise UsageError("--questions-only writes the question files into --out DIR: give --out")
        emit(write_probes(inputs, p["out"], opts), p["as_json"])
        return
    if not p["checkpoint"]:
        raise UsageError("give the model to evaluate: --checkpoint DIR (repeat it to compare several)")
    if len(p["checkpoint"]) == 1:
        result = evaluate(p["checkpoint"][0], inputs, opts, out=p["out"])
        text = table(result)
    else:
        result = compare(list(p["checkpoint"]), inputs, opts, out=p["out"])
        text = comparison_table(result["table"])
    if p["as_json"]:
        print(text, file=sys.stderr)  # the table for a person watching; stdout holds the JSON
    emit(result, p["as_json"], text=text)


def _register(name: str, tasks: tuple[str, ...], doc: str) -> None:
    def command(
        inputs: Annotated[list[str] | None, typer.Argument(
            metavar="INPUTS", help="Shards with object metadata (a world folder, paths, brace patterns, globs, - for a list on "
            "stdin); probes are built from them, or --questions images are looked up in them by SHARD/KEY.jpg or KEY.")] = None,
        checkpoint: Annotated[list[str] | None, typer.Option(
            "--checkpoint", "-c", metavar="DIR", help="A checkpoint folder; repeat to compare several side by side.")] = None,
        questions: list[str] | None = param(E, "questions", default=None),
        image_root: str | None = param(E, "image_root"),
        objects_field: str = param(E, "objects_field"),
        vocabulary: str | None = param(E, "vocabulary"),
        settings: str = param(E, "settings", default=",".join(E.settings)),
        per_image: int = param(E, "per_image"),
        blind: Annotated[bool, typer.Option("--blind/--no-blind", help="Also ask every probe with the image withheld (the language prior).")] = True,
        limit: int = param(E, "limit"),
        chair_images: int = param(E, "chair_images"),
        seed: int = param(E, "seed"),
        batch_size: int = param(E, "batch_size"),
        max_new_tokens: int = param(E, "max_new_tokens"),
        describe_tokens: int = param(E, "describe_tokens"),
        questions_only: Annotated[bool, typer.Option(
            "--questions-only", help="No model: write the built-in probes as POPE files into --out DIR/questions/ and stop.")] = False,
        device: str = param(E, "device"),
        out: Annotated[str | None, typer.Option(
            "--out", "-o", metavar="DIR", help="Write report.json, report.png, the question files and every answer here.")] = None,
        as_json: bool = JSON,
        progress: bool = param(E, "progress"),
    ) -> None:
        _run(tasks, locals())

    command.__doc__ = doc
    eval_app.command(name)(command)


for _name, (_tasks, _doc) in commands().items():
    _register(_name, _tasks, _doc)
