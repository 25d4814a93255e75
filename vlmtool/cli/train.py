"""`vlmtool train` and `vlmtool infer`."""

from __future__ import annotations

import typer

from vlmtool.cli._app import (
    DEVICE,
    INPUTS,
    JSON,
    MAX_PIXELS,
    OUT,
    PRECISION,
    PROGRESS,
    app,
    emit,
    options,
)


@app.command("train")
def train_cmd(
    inputs: list[str] = INPUTS,
    out: str = OUT,
    stage: int = typer.Option(1, "--stage", min=0, max=2, help="0: LM pretraining on the inputs' text; 1: alignment (connector only, on captions); "
                              "2: instruction tuning (connector + LM, on --instructions)."),
    connector: str = typer.Option("mlp", "--connector", help="mlp (LLaVA-1.5), xattn (Flamingo gated cross-attention) or native "
                                  "(Fuyu: pixel patches, reads image shards)."),
    lm: str = typer.Option("bundled", "--lm", help="bundled (the small LM trained here) or hf:PATH_OR_ID (any transformers causal LM)."),
    init: str | None = typer.Option(None, "--init", help="Continue from a checkpoint folder of an earlier stage (its LM, and its "
                                       "connector when it has a trained one)."),
    instructions: str | None = typer.Option(None, "--instructions", help="synth's instructions.jsonl, joined to the inputs by shard "
                                               "stem and key (stage 2; stage 0 also trains on its text)."),
    text_mix: float = typer.Option(0.1, "--text-mix", min=0.0, max=0.99, help="Stage 2: fraction of text-only samples (the captions as "
                                   "plain text) mixed in, against forgetting."),
    steps: int = typer.Option(500, "--steps", min=1, help="Optimizer steps in all (a rerun with more steps continues)."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1, help="Samples per step on each rank."),
    lr: float | None = typer.Option(None, "--lr", min=0.0, help="Peak learning rate (AdamW; default per stage: 1e-3, 1e-3, 1e-4)."),
    weight_decay: float = typer.Option(0.0, "--weight-decay", min=0.0, help="AdamW weight decay on matrices (LLaVA-1.5: 0)."),
    warmup: int = typer.Option(10, "--warmup", min=0, help="Steps of linear learning-rate warmup, then cosine decay."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation, data order and the text mix."),
    val_samples: int = typer.Option(16, "--val-samples", min=0, help="Samples held out (at most a tenth) for the validation losses."),
    shuffle_buffer: int = typer.Option(1000, "--shuffle-buffer", min=1, help="Items in the sample shuffle buffer."),
    length_groups: int = typer.Option(1, "--length-groups", min=1, help="Sort each run of N batches' items by length before "
                                      "batching, so a batch pads to its own longest (transformers' group_by_length; 16 is about 2x "
                                      "faster on synth's data, but each batch then holds one kind of answer); 1: off."),
    pack: int = typer.Option(0, "--pack", min=0, help="Pack each batch's samples into rows of up to N tokens (a block-diagonal "
                             "causal mask and positions per sample: the same loss, fewer padding slots; 128 is about 1.5x "
                             "faster on synth's stage-2 data); bundled LM, mlp connector; 0: off."),
    vocab_size: int = typer.Option(4096, "--vocab-size", min=264, help="New bundled LM: the BPE vocabulary trained on the inputs' text."),
    d_model: int = typer.Option(256, "--d-model", min=8, help="New bundled LM: width."),
    n_layers: int = typer.Option(4, "--n-layers", min=1, help="New bundled LM: transformer blocks."),
    n_heads: int = typer.Option(4, "--n-heads", min=1, help="New bundled LM: attention heads (half as many key/value heads)."),
    max_seq: int = typer.Option(1024, "--max-seq", min=16, help="New bundled LM: context length (longer samples are skipped)."),
    image_size: int = typer.Option(224, "--image-size", min=8, help="native connector: images are resized to this square."),
    patch_size: int = typer.Option(16, "--patch-size", min=2, help="native connector: pixel patch size."),
    workers: int = typer.Option(1, "--workers", "-w", min=0, help="Loader worker processes (0: read in the main process)."),
    save_every: int = typer.Option(200, "--save-every", min=1, help="Save the checkpoint and training state every N steps (and at the end)."),
    time_limit: float | None = typer.Option(None, "--time-limit", min=1.0, help="Stop (and save) after this many seconds; rerun to resume."),
    stop_at: int | None = typer.Option(None, "--stop-at", min=1, help="Stop (and save) at this step without changing the schedule; rerun to resume."),
    device: str = DEVICE,
    precision: str = PRECISION,
    as_json: bool = JSON,
    progress: bool = PROGRESS,
) -> None:
    """Train the VLM, stage 0, 1 or 2, on feature shards (image shards for --connector native); rerun to resume."""
    from vlmtool.vlm.train import TrainOptions, run_train

    emit(run_train(inputs, out, options(TrainOptions, locals())), as_json)


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
