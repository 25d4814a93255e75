"""`vlmtool demo`."""

from __future__ import annotations

import typer

from vlmtool.cli._app import JSON, PROGRESS, app, emit, options


@app.command("demo")
def demo_cmd(
    out: str = typer.Option("vlmtool-demo", "--out", "-o", help="Folder for the demo's worlds and job outputs (a rerun resumes).", metavar="DIR"),
    samples: int = typer.Option(1200, "--samples", "-n", min=64, help="Size of the train world the pipeline filters and trains on."),
    test: int = typer.Option(200, "--test", min=16, help="Size of the test world eval reads (the only one the demo reports)."),
    dev: int = typer.Option(200, "--dev", min=16, help="Size of the dev world (written for tuning: the only world a choice may be tuned on)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train and clip worlds and of every training run (the dev and test "
                             "worlds are the same for every seed)."),
    kind: str = typer.Option("scenes", "--kind", help="The worlds' objects: scenes (16 kinds in 4 scene types) or shapes (the 6 shapes)."),
    clip_steps: int = typer.Option(1200, "--clip-steps", min=1, help="Steps of CLIP training (the vision tower)."),
    tune_steps: int = typer.Option(1200, "--tune-steps", min=1, help="Steps of stage-2 instruction tuning."),
    as_json: bool = JSON,
    progress: bool = PROGRESS,
) -> None:
    """Run the whole pipeline on fresh synthetic worlds: world, inspect, clip-train, filter, synth, budget, encode, train 0-2, eval."""
    from vlmtool.demo import DemoOptions, run_demo
    from vlmtool.world.scenes import world_kind

    world_kind(kind)  # an unknown kind fails before any world is written

    from vlmtool.cli._app import summary_lines
    from vlmtool.evals.report import table

    result = run_demo(out, options(DemoOptions, locals()))
    rest = {k: v for k, v in result.items() if k not in ("pope", "blind", "swap", "chair", "negatives_overlap")}
    emit(result, as_json, text=table(result) + "\n" + "\n".join(summary_lines(rest)))
