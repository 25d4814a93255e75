"""`vlmtool train` and `vlmtool infer`: every option's default and help come from TrainOptions' and InferOptions' fields."""

from __future__ import annotations

from vlmtool.cli._app import INPUTS, JSON, OUT, app, emit, options, param
from vlmtool.vlm.infer import InferOptions as I
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
    checkpoint: str = param(I, "checkpoint"),
    image: str | None = param(I, "image"),
    question: str | None = param(I, "question"),
    questions: str | None = param(I, "questions"),
    shards: list[str] | None = param(I, "shards"),
    max_new_tokens: int = param(I, "max_new_tokens"),
    temperature: float = param(I, "temperature"),
    top_p: float = param(I, "top_p"),
    seed: int = param(I, "seed"),
    batch_size: int = param(I, "batch_size"),
    no_cache: bool = param(I, "no_cache"),
    blind: bool = param(I, "blind"),
    max_pixels: int = param(I, "max_pixels"),
    allow_tower_change: bool = param(I, "allow_tower_change"),
    device: str = param(I, "device"),
    precision: str = param(I, "precision"),
    decode: str = param(I, "decode"),
    as_json: bool = JSON,
) -> None:
    """Answer questions about images with a trained checkpoint (its own vision tower encodes them)."""
    from vlmtool.vlm.infer import run_infer

    run_infer(options(I, locals()), as_json)
