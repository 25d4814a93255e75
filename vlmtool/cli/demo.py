"""`vlmtool demo`."""

from __future__ import annotations

import typer

from vlmtool.cli._app import JSON, app, emit, options, param
from vlmtool.demo import DemoOptions as D


@app.command("demo")
def demo_cmd(
    out: str = typer.Option("vlmtool-demo", "--out", "-o", help="Folder for the demo's worlds and job outputs (a rerun resumes).", metavar="DIR"),
    samples: int = param(D, "samples"),
    test: int = param(D, "test"),
    dev: int = param(D, "dev"),
    seed: int = param(D, "seed"),
    kind: str = param(D, "kind"),
    clip_steps: int = param(D, "clip_steps"),
    tune_steps: int = param(D, "tune_steps"),
    tune_batch: int = param(D, "tune_batch"),
    as_json: bool = JSON,
    progress: bool = param(D, "progress"),
) -> None:
    """Run the whole pipeline on fresh synthetic worlds: world, inspect, clip-train, filter, synth, budget, encode, train 0-2, eval."""
    from vlmtool.demo import run_demo
    from vlmtool.world.scenes import world_kind

    world_kind(kind)  # an unknown kind fails before any world is written

    from vlmtool.cli._app import summary_lines
    from vlmtool.evals.report import table

    result = run_demo(out, options(D, locals()))
    rest = {k: v for k, v in result.items() if k not in ("pope", "blind", "swap", "chair", "negatives_overlap")}
    emit(result, as_json, text=table(result) + "\n" + "\n".join(summary_lines(rest)))
