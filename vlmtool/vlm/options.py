"""`vlmtool train`'s options: one frozen dataclass, each field with its default and its
command-line form (core/options.py), light to import (the CLI builds its parameters from it)."""

from __future__ import annotations

from dataclasses import dataclass

from vlmtool.core.options import DEVICE, PRECISION, PROGRESS, WORKERS, option

# Peak learning rates per stage. Stage 1: LLaVA-1.5's projector lr, 1e-3 (haotian-liu/LLaVA,
# scripts/v1_5/pretrain.sh), which suits a small connector as it is. Stage 2: LLaVA-1.5 tunes a
# 7B LM at 2e-5 (scripts/v1_5/finetune.sh); the bundled LM is ~1000x smaller and was itself
# pretrained here at 1e-3, and small models take (and need) larger steps: 1e-4 keeps the LM
# moving in a few hundred steps without undoing stage 0 (the text-only validation loss shows it).
# Stage 0: 1e-3, nanoGPT's rate for its ~10M-parameter models (karpathy/nanoGPT,
# config/train_shakespeare_char.py).
STAGE_LR = {0: 1e-3, 1: 1e-3, 2: 1e-4}

@dataclass(frozen=True)
class TrainOptions:
    """`vlmtool train`'s options (see its --help)."""

    stage: int = option(1, "0: LM pretraining on the inputs' text; 1: alignment (connector only, on captions); "
                        "2: instruction tuning (connector + LM, on --instructions).", min=0, max=2)
    connector: str = option("mlp", "mlp (LLaVA-1.5), xattn (Flamingo gated cross-attention) or native "
                            "(Fuyu: pixel patches, reads image shards).")
    lm: str = option("bundled", "bundled (the small LM trained here) or hf:PATH_OR_ID (any transformers causal LM).")
    init: str | None = option(None, "Continue from a checkpoint folder of an earlier stage (its LM, and its "
                              "connector when it has a trained one).")
    instructions: str | None = option(None, "synth's instructions.jsonl, joined to the inputs by shard "
                                      "stem and key (stage 2; stage 0 also trains on its text).")
    text_mix: float = option(0.1, "Stage 2: fraction of text-only samples (the captions as "
                             "plain text) mixed in, against forgetting.", min=0.0, max=0.99)
    steps: int = option(500, "Optimizer steps in all (a rerun with more steps continues).", min=1, free=True)
    batch_size: int = option(16, "Samples per step on each rank.", flags=("--batch-size", "-b"), min=1)
    lr: float | None = option(None, "Peak learning rate (AdamW; default per stage: 1e-3, 1e-3, 1e-4).", min=0.0)  # None: STAGE_LR
    weight_decay: float = option(0.0, "AdamW weight decay on matrices (LLaVA-1.5: 0).", min=0.0)
    warmup: int = option(10, "Steps of linear learning-rate warmup, then cosine decay.", min=0)
    seed: int = option(0, "Seed of initialisation, data order and the text mix.")
    val_samples: int = option(16, "Samples held out (at most a tenth) for the validation losses.", min=0)
    shuffle_buffer: int = option(1000, "Items in the sample shuffle buffer.", min=1)
    length_groups: int = option(1, "Sort each run of N batches' items by length before "
                                "batching, so a batch pads to its own longest (transformers' group_by_length; 16 is about 2x "
                                "faster on synth's data, but each batch then holds one kind of answer); 1: off.", min=1)
    pack: int = option(0, "Pack each batch's samples into rows of up to N tokens, or of the batch's longest "
                       "sample when it is longer (a block-diagonal causal mask and positions per sample: the same loss, "
                       "fewer padding slots; 128 is about 1.8-2x faster on the demo's stage-2 data); bundled LM, mlp "
                       "connector; 0: off.", min=0)
    vocab_size: int = option(4096, "New bundled LM: the BPE vocabulary trained on the inputs' text.", min=264)
    d_model: int = option(256, "New bundled LM: width.", min=8)
    n_layers: int = option(4, "New bundled LM: transformer blocks.", min=1)
    n_heads: int = option(4, "New bundled LM: attention heads (half as many key/value heads).", min=1)
    max_seq: int = option(1024, "New bundled LM: context length (longer samples are skipped).", min=16)
    image_size: int = option(224, "native connector: images are resized to this square.", min=8)
    patch_size: int = option(16, "native connector: pixel patch size.", min=2)
    workers: int = WORKERS(1)
    save_every: int = option(200, "Save the checkpoint and training state every N steps (and at the end).", min=1, free=True)
    time_limit: float | None = option(None, "Stop (and save) after this many seconds; rerun to resume.", min=1.0, free=True)
    stop_at: int | None = option(None, "Stop (and save) at this step without changing the schedule; rerun to resume.", min=1, free=True)
    device: str = DEVICE()
    precision: str = PRECISION(free=True)
    progress: bool = PROGRESS()

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else STAGE_LR[self.stage]
