"""`vlmtool export-model`: a checkpoint as a transformers LLaVA folder."""

from __future__ import annotations

import typer

from vlmtool.cli._app import JSON, app, emit


@app.command("export-model")
def export_model_cmd(
    checkpoint: str = typer.Option(..., "--checkpoint", "-c", help="A checkpoint folder written by vlmtool train (mlp connector, ViT tower)."),
    out: str = typer.Option(..., "--out", "-o", metavar="HF_DIR", help="A new folder for the LLaVA model (refused when it holds anything)."),
    as_json: bool = JSON,
) -> None:
    """Write a checkpoint as a folder transformers loads with LlavaForConditionalGeneration and AutoProcessor
    (vLLM and SGLang serve it as a LLaVA model)."""
    from vlmtool.export_model import export_model

    emit(export_model(checkpoint, out), as_json)
