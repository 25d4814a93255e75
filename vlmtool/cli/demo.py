"""`vlmtool demo`."""

from __future__ import annotations

import typer

from vlmtool.cli._app import JSON, PROGRESS, app, emit, options


@app.command("demo")
def demo_cmd(
    out: str = typer.Option("vlmtool-demo", "--out", "-o", help="Folder for the demo's worlds and job outputs (a rerun resumes).", metavar="DIR"),
    samples: int = typer.Option(1200, "--samples", "-n", min=64, help="Size of the shapes world the pipeline filters and trains on."),
    heldout: int = typer.Option(120, "--heldout", min=16, help="Size of the held-out world eval reads."),
    clip_steps: int = typer.Option(1200, "--clip-steps", min=1, help="Steps of CLIP training (the vision tower)."),
    tune_steps: int = typer.Option(1200, "--tune-steps", min=1, help="Steps of stage-2 instruction tuning."),
    as_json: bool = JSON,
    progress: bool = PROGRESS,
) -> None:
    """Run the whole pipeline on fresh shapes worlds: world, inspect, clip-train, filter, synth, budget, encode, train 0-2, eval."""
    from vlmtool.demo import DemoOptions, run_demo

    from vlmtool.cli._app import summary_lines
    from vlmtool.evals.report import table

    result = run_demo(out, options(DemoOptions, locals()))
    rest = {k: v for k, v in result.items() if k not in ("pope", "blind", "swap", "chair")}
    emit(result, as_json, text=table(result) + "\n" + "\n".join(summary_lines(rest)))
