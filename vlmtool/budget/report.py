"""`vlmtool budget`'s options and what its sections share: `BudgetOptions` (one field per
command-line option, same names, built once by the CLI), `Result` (log lines for stderr and,
when an input failed, the one-line reason to exit 1), the per-model settings, the KV/price
extras and the text table. The command itself is `sections.report(BudgetOptions(...), out)`.

Sections, each present when asked for: image plans (--size, or one image file), datasets
(shards, folders, several images, `-`), videos (files, or --size with --duration/--frames),
audio (files, or --seconds). `budget photo.jpg clip.mp4` prints the image and the video.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from vlmtool.budget import PRESETS, parse_options
from vlmtool.budget.registry import defaults
from vlmtool.core.options import PROGRESS, option
from vlmtool.errors import UsageError

STRATEGIES = ("uniform", "fps", "content")


@dataclass(frozen=True)
class BudgetOptions:
    """`vlmtool budget`'s options (see its --help): each field with its default and its command-line
    form (core/options.py)."""

    inputs: tuple[str, ...] = ()  # the command's argument
    size: tuple[str, ...] = option((), "An image (or video frame) size WIDTHxHEIGHT, no file needed (repeatable).",
                                   flags=("--size", "-s"), metavar="WxH")
    model: str = option("llava-1.5", "Preset(s), comma-separated; --list shows them all.", flags=("--model", "-m"),
                        metavar="PRESET[,PRESET...]")
    set: tuple[str, ...] = option((), "A preset option KEY=VALUE, e.g. max_pixels=1003520, max_tiles=6, detail=low, "
                                  "grid_pinpoints=336x672,672x336 (repeatable).", metavar="KEY=VALUE")
    frames: int | None = option(None, "Video: tokens for this many frames at --size (or of the video).", min=0)
    context: int | None = option(None, "Video: context budget B in tokens; plans f_max = floor((B - reserved) / P) frames.", min=1)
    reserved: int = option(0, "Video: tokens of B kept for text.", min=0)
    video_text: bool = option(True, "Video with --context: count the timestamp text Qwen3-VL and GLM-4.1V write around the "
                              "frames in B (default), or visual tokens only.", flags=("--video-text/--no-video-text",))
    duration: float | None = option(None, "Video given by numbers: seconds (with --size and --fps).", min=0.0)
    fps: float | None = option(None, "Video given by numbers: frame rate.", min=0.0)
    select: str = option("uniform", "Which frames: uniform, fps (cap at --sample-fps), content (where the picture changes).",
                         metavar="uniform|fps|content")
    sample_fps: float | None = option(None, "With --select fps: at most this many frames a second.", min=0.0)
    temporal_pool: int = option(1, "Video: merge k consecutive frames into one.", min=1)
    seconds: float | None = option(None, "Audio given by numbers: a clip of this many seconds.", min=0.0)
    draw: str | None = option(None, "Write a PNG of the tiles over the image (one image or size, one model).", metavar="PNG")
    kv_layers: int | None = option(None, "KV cache: LLM layers (with --kv-heads, --head-dim).", min=1)
    kv_heads: int | None = option(None, "KV cache: key/value heads.", min=1)
    head_dim: int | None = option(None, "KV cache: head dimension.", min=1)
    kv_dtype: str = option("bf16", "KV cache dtype: fp32, bf16, fp16, fp8, int8, int4.", metavar="DTYPE")
    price_per_mtok: float | None = option(None, "Price per million input tokens, applied to the billed tokens.", min=0.0)
    max_image_pixels: int = option(1 << 32, "Datasets: an image whose header declares more pixels is rejected (too_large).", min=1)
    max_parts: int = option(64, "List a plan's parts (tiles, crops) only up to this many.", min=1)
    max_frames: int = option(100_000, "Video: plan and list at most this many frames, whatever the budget or the header allows.",
                             min=1)
    rows: bool = option(False, "Datasets: one JSON line per image and model on stdout instead of the summary.")
    json: bool = option(False, "Machine output: JSON lines (one per size and model), or one summary object for datasets.")
    list: bool = option(False, "List every preset with its modalities, configuration and source.")
    progress: bool = PROGRESS()

    def __post_init__(self):
        for f in fields(self):  # lists from the command line become tuples: the object is frozen and comparable
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))


@dataclass
class Result:
    log: list[str] = field(default_factory=list)  # lines for stderr
    failures: list[str] = field(default_factory=list)  # inputs that could not be read (exit 1)

    @property
    def failed(self) -> str | None:
        """One line naming the failed inputs, or None."""
        if not self.failures:
            return None
        more = len(self.failures) - 1
        return self.failures[0] + (f" (and {more} more input(s) failed)" if more else "")


def settings(opts: BudgetOptions, models: list[str], modality: str) -> dict[str, dict]:
    """Each model's typed options for one modality from the --set pairs (each checked); a key no
    model has for any modality is refused."""
    for pair in opts.set:
        key = pair.partition("=")[0].strip().replace("-", "_")
        if key != "temporal_pool" and not any(key in dict(defaults(m, mod)) for m in models for mod in PRESETS[m].modalities):
            raise UsageError(f"--set {pair!r}: none of {', '.join(models)} has an option {key!r}")
    return {m: parse_options(m, list(opts.set), modality) for m in models if modality in PRESETS[m].modalities}


def extras(opts: BudgetOptions, tokens: int, billed: float | None = None) -> dict:
    """KV-cache bytes of `tokens` and the price of the billed tokens (hosted APIs bill some
    tokens with a multiplier: gpt-4.1-mini bills 1.62 per patch)."""
    from vlmtool.budget.dataset import kv_cache_bytes

    extra = {}
    if opts.kv_layers is not None:
        extra["kv_bytes"] = kv_cache_bytes(tokens, opts.kv_layers, opts.kv_heads, opts.head_dim, opts.kv_dtype)
    if opts.price_per_mtok is not None:
        extra["price"] = round((tokens if billed is None else billed) / 1e6 * opts.price_per_mtok, 10)
    return extra


def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) if i and c.replace(".", "").isdigit() else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                     for r in cells)
