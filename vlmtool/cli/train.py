"""`vlmtool train` (every option's default and help from TrainOptions' fields) and `vlmtool infer`."""

from __future__ import annotations

import typer

from vlmtool.cli._app import (
    DEVICE,
    INPUTS,
    JSON,
    MAX_PIXELS,
    OUT,
    PRECISION,
    app,
    emit,
    options,
    param,
)
from vlmtool.vlm.options import TrainOptions as T


@app.command("train")
def train_cmd(
    inputs: list[str] = INPUTS,
    out: str = OUT,
    stage: int = param(T, "stage"),
    connector: str = param(T, "connector"),
    lm: str = param(T, "lm"),
    init: str | None = param(T, "init"),
    instructions: str | None = param(T, "instructions"),
    text_mix: float = param(T, "text_mix"),
    steps: int = param(T, "steps"),
    batch_size: int = param(T, "batch_size"),
    lr: float | None = param(T, "lr"),
    weight_decay: float = param(T, "weight_decay"),
    warmup: int = param(T, "warmup"),
    seed: int = param(T, "seed"),
    val_samples: int = param(T, "val_samples"),
    shuffle_buffer: int = param(T, "shuffle_buffer"),
    length_groups: int = param(T, "length_groups"),
    pack: int = param(T, "pack"),
    vocab_size: int = param(T, "vocab_size"),
    d_model: int = param(T, "d_model"),
    n_layers: int = param(T, "n_layers"),
    n_heads: int = param(T, "n_heads"),
    max_seq: int = param(T, "max_seq"),
    image_size: int = param(T, "image_size"),
    patch_size: int = param(T, "patch_size"),
    workers: int = param(T, "workers"),
    save_every: int = param(T, "save_every"),
    time_limit: float | None = param(T, "time_limit"),
    stop_at: int | None = param(T, "stop_at"),
    device: str = param(T, "device"),
    precision: str = param(T, "precision"),
    as_json: bool = JSON,
    progress: bool = param(T, "progress"),
) -> None:
    """Train the VLM, stage 0, 1 or 2, on feature shards (image shards for --connector native); rerun to resume."""
    from vlmtool.vlm.train import run_train

    emit(run_train(inputs, out, options(T, locals())), as_json)


@app.command("infer")
def infer_cmd(
    checkpoint: str = typer.Option(..., "--checkpoint", "-c", help="A checkpoint folder written by vlmtool train."),
    image: str | None = typer.Option(None, "--image", help="An image file to ask about."),
    question: str | None = typer.Option(None, "--question", "-q", help="The question (with --image, or for every sample of --shards)."),
    questions: str | None = typer.Option(None, "--questions", help="Batch mode: a JSONL file of {\"image\", \"question\"} rows."),
    shards: list[str] | None = typer.Option(None, "--shards", help="Batch mode: image shards; --question is asked of every sample."),  # noqa: B008
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, help="Longest answer, in tokens."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0: greedy decoding; above 0: sampling."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="Sampling: nucleus mass."),
    seed: int = typer.Option(0, "--seed", help="Sampling: seed of the draws."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="Questions answered together."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Recompute the whole sequence at every step instead of using the KV cache (for checking)."),
    blind: bool = typer.Option(False, "--blind", help="Withhold the image (the visual tokens) from the model."),
    max_pixels: int = MAX_PIXELS,
    allow_tower_change: bool = typer.Option(False, "--allow-tower-change", help="Encode with the checkpoint's tower even if its "
                                            "weights file changed since the features were made (sha256 differs)."),
    device: str = DEVICE,
    precision: str = PRECISION,
    decode: str = typer.Option("cpu", "--decode", help="cpu: open_clip's transform on the CPU; device: the image (decoded "
                               "with PIL) is resized, cropped and normalized in torch on the model's device."),
    as_json: bool = JSON,
) -> None:
    """Answer questions about images with a trained checkpoint (its own vision tower encodes them)."""
    from vlmtool.vlm.infer import InferOptions, run_infer

    run_infer(options(InferOptions, locals()), as_json)
