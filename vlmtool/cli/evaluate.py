"""`vlmtool eval pope|swap|chair|all`: object-hallucination evals of one or more checkpoints."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from vlmtool.cli._app import DEVICE, JSON, PROGRESS, app, emit, options
from vlmtool.evals.tasks import commands

eval_app = typer.Typer(help="Does the model look at the pixels? POPE, swap, blind and CHAIR for checkpoints.",
                       no_args_is_help=True, rich_markup_mode=None)
app.add_typer(eval_app, name="eval")

def _options(tasks: tuple[str, ...], p: dict):
    from vlmtool.evals import EvalOptions

    if not p["blind"]:
        tasks = tuple(t for t in tasks if t != "blind")
    settings = tuple(s.strip() for s in p["settings"].split(",") if s.strip())
    return options(EvalOptions, {**p, "tasks": tasks, "settings": settings, "questions": tuple(p["questions"] or ())})


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
        questions: Annotated[list[str] | None, typer.Option(
            "--questions", "-q", metavar="FILE", help="POPE JSONL file(s) ({question_id, image, text, label}), as published; "
            "results under pope.<file stem>. Repeatable.")] = None,
        image_root: Annotated[str | None, typer.Option("--image-root", metavar="DIR", help="Folder the --questions `image` names are files in.")] = None,
        objects_field: Annotated[str, typer.Option("--objects-field", help="The JSON field listing each sample's object labels.")] = "objects",
        vocabulary: Annotated[str | None, typer.Option(
            "--vocabulary", metavar="FILE", help="Objects and synonyms, `label, synonym, ...` a line (CHAIR's synonyms.txt format).")] = None,
        settings: Annotated[str, typer.Option("--settings", help="Built-in POPE settings, comma-separated.")] = "random,popular,adversarial",
        per_image: Annotated[int, typer.Option("--per-image", min=1, help="POPE: yes probes (and as many no probes) per image, at most.")] = 3,
        blind: Annotated[bool, typer.Option("--blind/--no-blind", help="Also ask every probe with the image withheld (the language prior).")] = True,
        limit: Annotated[int, typer.Option("--limit", min=0, help="Read at most this many samples (0: all).")] = 1000,
        chair_images: Annotated[int, typer.Option("--chair-images", min=0, help="CHAIR: describe at most this many images (0: all).")] = 200,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the random negatives and swap partners.")] = 0,
        batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Questions per call to the model.")] = 16,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Tokens of a yes/no answer.")] = 8,
        describe_tokens: Annotated[int, typer.Option("--describe-tokens", min=1, help="Tokens of a CHAIR description.")] = 96,
        questions_only: Annotated[bool, typer.Option(
            "--questions-only", help="No model: write the built-in probes as POPE files into --out DIR/questions/ and stop.")] = False,
        device: str = DEVICE,
        out: Annotated[str | None, typer.Option(
            "--out", "-o", metavar="DIR", help="Write report.json, report.png, the question files and every answer here.")] = None,
        as_json: bool = JSON,
        progress: bool = PROGRESS,
    ) -> None:
        _run(tasks, locals())

    command.__doc__ = doc
    eval_app.command(name)(command)


for _name, (_tasks, _doc) in commands().items():
    _register(_name, _tasks, _doc)
