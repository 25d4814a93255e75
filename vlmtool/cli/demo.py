"""`vlmtool demo`."""

from __future__ import annotations


import typer

from vlmtool.cli._app import JSON, PROGRESS, app, emit


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
