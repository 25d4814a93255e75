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
from vlmtool.errors import UsageError

STRATEGIES = ("uniform", "fps", "content")


@dataclass(frozen=True)
class BudgetOptions:
    inputs: tuple[str, ...] = ()
    size: tuple[str, ...] = ()
    model: str = "llava-1.5"
    set: tuple[str, ...] = ()
    frames: int | None = None
    context: int | None = None
    reserved: int = 0
    video_text: bool = True
    duration: float | None = None
    fps: float | None = None
    select: str = "uniform"
    sample_fps: float | None = None
    temporal_pool: int = 1
    seconds: float | None = None
    draw: str | None = None
    kv_layers: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    kv_dtype: str = "bf16"
    price_per_mtok: float | None = None
    max_image_pixels: int = 1 << 32
    max_parts: int = 64
    max_frames: int = 100_000
    rows: bool = False
    json: bool = False
    list: bool = False
    progress: bool = True

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
