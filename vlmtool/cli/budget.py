"""`vlmtool budget`: parse the options, build BudgetOptions, call report, print."""

from __future__ import annotations

import sys

import typer

from vlmtool.cli._app import PROGRESS, app

# List-valued options as module-level singletons (ruff B008).
INPUTS = typer.Argument(None, metavar="INPUT", help="Images, folders, webdataset shards (brace patterns, globs, pipe:/URLs), videos, audio, or - for names on stdin. Leave out with --size or --seconds.")
SIZE = typer.Option(None, "--size", "-s", metavar="WxH", help="An image (or video frame) size WIDTHxHEIGHT, no file needed (repeatable).")
SET = typer.Option(None, "--set", metavar="KEY=VALUE", help="A preset option KEY=VALUE, e.g. max_pixels=1003520, max_tiles=6, detail=low, grid_pinpoints=336x672,672x336 (repeatable).")


@app.command("budget")
def budget_cmd(
    inputs: list[str] | None = INPUTS,
    size: list[str] | None = SIZE,
    model: str = typer.Option("llava-1.5", "--model", "-m", metavar="PRESET[,PRESET...]", help="Preset(s), comma-separated; --list shows them all."),
    set: list[str] | None = SET,
    frames: int | None = typer.Option(None, "--frames", min=0, help="Video: tokens for this many frames at --size (or of the video)."),
    context: int | None = typer.Option(None, "--context", min=1, help="Video: context budget B in tokens; plans f_max = floor((B - reserved) / P) frames."),
    reserved: int = typer.Option(0, "--reserved", min=0, help="Video: tokens of B kept for text."),
    video_text: bool = typer.Option(True, "--video-text/--no-video-text", help="Video with --context: count the timestamp text Qwen3-VL and GLM-4.1V write around the frames in B (default), or visual tokens only."),
    duration: float | None = typer.Option(None, "--duration", min=0.0, help="Video given by numbers: seconds (with --size and --fps)."),
    fps: float | None = typer.Option(None, "--fps", min=0.0, help="Video given by numbers: frame rate."),
    select: str = typer.Option("uniform", "--select", metavar="uniform|fps|content", help="Which frames: uniform, fps (cap at --sample-fps), content (where the picture changes)."),
    sample_fps: float | None = typer.Option(None, "--sample-fps", min=0.0, help="With --select fps: at most this many frames a second."),
    temporal_pool: int = typer.Option(1, "--temporal-pool", min=1, help="Video: merge k consecutive frames into one."),
    seconds: float | None = typer.Option(None, "--seconds", min=0.0, help="Audio given by numbers: a clip of this many seconds."),
    draw: str | None = typer.Option(None, "--draw", metavar="PNG", help="Write a PNG of the tiles over the image (one image or size, one model)."),
    kv_layers: int | None = typer.Option(None, "--kv-layers", min=1, help="KV cache: LLM layers (with --kv-heads, --head-dim)."),
    kv_heads: int | None = typer.Option(None, "--kv-heads", min=1, help="KV cache: key/value heads."),
    head_dim: int | None = typer.Option(None, "--head-dim", min=1, help="KV cache: head dimension."),
    kv_dtype: str = typer.Option("bf16", "--kv-dtype", metavar="DTYPE", help="KV cache dtype: fp32, bf16, fp16, fp8, int8, int4."),
    price_per_mtok: float | None = typer.Option(None, "--price-per-mtok", min=0.0, help="Price per million input tokens, applied to the billed tokens."),
    max_image_pixels: int = typer.Option(1 << 32, "--max-image-pixels", min=1, help="Datasets: an image whose header declares more pixels is rejected (too_large)."),
    max_frames: int = typer.Option(100_000, "--max-frames", min=1, help="Video: plan and list at most this many frames, whatever the budget or the header allows."),
    max_parts: int = typer.Option(64, "--max-parts", min=1, help="List a plan's parts (tiles, crops) only up to this many."),
    rows: bool = typer.Option(False, "--rows", help="Datasets: one JSON line per image and model on stdout instead of the summary."),
    json: bool = typer.Option(False, "--json", help="Machine output: JSON lines (one per size and model), or one summary object for datasets."),
    list: bool = typer.Option(False, "--list", help="List every preset with its modalities, configuration and source."),
    progress: bool = PROGRESS,
) -> None:
    """Exact visual- and audio-token counts per model, AnyRes tiling plans and video frame budgets."""
    given = dict(locals())  # every option above, by its own name
    from vlmtool.budget.report import BudgetOptions
    from vlmtool.budget.sections import report
    from vlmtool.errors import JobFailed

    result = report(BudgetOptions(**{k: v for k, v in given.items() if v is not None}), sys.stdout.buffer)
    for line in result.log:
        print(line, file=sys.stderr)
    if result.failed:
        raise JobFailed(result.failed)
