"""Exact visual- and audio-token accounting per model family, AnyRes plans and video frame budgets.

    >>> from vlmtool.budget import image_tokens, video_tokens
    >>> image_tokens("llava-1.5", 1920, 1080)
    576
    >>> image_tokens("qwen2-vl", 1920, 1080, max_pixels=1003520)
    1222

The whole `vlmtool budget` command is `report(BudgetOptions(...), out)` (vlmtool.budget.report).
Nothing here imports torch, open_clip or numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

from vlmtool.budget.presets import Part, Plan
from vlmtool.budget.registry import PRESETS, check_options, check_value, defaults, get
from vlmtool.errors import UsageError

__all__ = ["PRESETS", "Part", "Plan", "audio_tokens", "check_preset", "image_counter", "image_plan", "image_tokens", "parse_options",
           "preset_options", "video_tokens"]


def check_preset(name: str, modality: str = "image") -> None:
    """UsageError (one line, naming the known presets) unless `name` has a `modality` rule."""
    defaults(get(name).name, modality)


def preset_options(name: str, modality: str = "image") -> dict:
    """The keyword options of a preset's rule with their defaults (the release's config)."""
    return dict(defaults(name, modality))


def _freeze(value):
    return tuple(_freeze(v) for v in value) if isinstance(value, (list, tuple)) else value


def image_plan(preset: str, width: int, height: int, **options) -> Plan:
    """The full plan: tokens, wrapper tokens, grid, and the parts (tiles, thumbnail, ...: each
    with its box, grid cell and tokens; built on first use of `plan.parts`).

    Plans are cached by (preset, size, options): datasets repeat sizes, so budgeting one costs
    a dictionary lookup. The returned Plan is shared; do not modify it."""
    return image_counter(preset, **options)(width, height)


def image_counter(preset: str, **options) -> Callable[[int, int], Plan]:
    """(width, height) -> Plan for one preset and options, checked once; for many images."""
    frozen = tuple(sorted((k, _freeze(v)) for k, v in options.items()))
    return _counter(preset, frozen)


@lru_cache(maxsize=256)
def _counter(preset: str, frozen: tuple) -> Callable[[int, int], Plan]:
    options = dict(frozen)
    check_options(preset, "image", options)
    fn = get(preset).image
    full = {**preset_options(preset), **options}

    @lru_cache(maxsize=1 << 16)
    def plan(width: int, height: int) -> Plan:
        p = fn(width, height, **options)
        p.options = {**full, **p.options}
        return p

    return plan


def image_tokens(preset: str, width: int, height: int, **options) -> int:
    """Visual placeholder tokens of one width x height image under `preset`."""
    return image_plan(preset, width, height, **options).tokens


def video_tokens(preset: str, num_frames: int, width: int, height: int, **options) -> int:
    """Visual tokens of `num_frames` frames of a width x height video under `preset`.

    Each family's video rule lives beside its image rule (vlmtool.budget.registry): Qwen2-VL,
    Qwen2.5-VL and Qwen3-VL merge frame pairs at the video processor's pixel limits, GLM-4.1V
    likewise, LLaVA-OneVision pools each frame 2x2, InternVL encodes each frame as one tile,
    Gemini counts 258 a frame; every other preset encodes each frame as an image.
    `temporal_pool=k` merges k consecutive frames into one first.
    """
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 0:
        raise UsageError(f"num_frames must be a non-negative integer, got {num_frames!r}")
    options = dict(options)
    pool = options.pop("temporal_pool", 1)
    if isinstance(pool, bool) or not isinstance(pool, int) or not 1 <= pool <= 1 << 20:
        raise UsageError(f"temporal_pool must be an integer >= 1, got {pool!r}")
    if isinstance(width, bool) or isinstance(height, bool) or not (isinstance(width, int) and isinstance(height, int)) or width <= 0 or height <= 0:
        raise UsageError(f"video size must be positive integers, got {width}x{height}")
    check_options(preset, "video", options)
    frames = math.ceil(num_frames / pool)
    return get(preset).rule("video")(frames, width, height, **options) if frames else 0


def audio_tokens(preset: str, seconds: float, **options) -> int:
    """Audio tokens of a clip of `seconds` under `preset` (its encoder's frames after any pooling)."""
    check_options(preset, "audio", options)
    return get(preset).rule("audio")(seconds, **options)


def _coerce(value: str, default):
    if isinstance(default, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(value)
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    if isinstance(default, tuple):  # grid pinpoints: "336x672,672x336" (height x width)
        out = []
        for item in value.split(","):
            h, sep, w = item.strip().lower().partition("x")
            if not sep:
                raise ValueError(item)
            out.append((int(h), int(w)))
        return tuple(out)
    return value


def parse_options(preset: str, pairs: list[str], modality: str = "image") -> dict:
    """`key=value` strings -> typed keyword options for `preset` (types from its defaults), each
    checked for type and range. Keys the preset does not have are skipped (an option of another
    preset in a side-by-side run); `temporal_pool` is kept for video."""
    known = {**preset_options(preset, modality), **({"temporal_pool": 1} if modality == "video" else {})}
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise UsageError(f"--set {pair!r} should look like key=value")
        if key not in known:
            continue
        kind = "HEIGHTxWIDTH pairs" if isinstance(known[key], tuple) else type(known[key]).__name__
        try:
            out[key] = _coerce(value.strip(), known[key])
        except ValueError:
            raise UsageError(f"--set {key}={value}: not a valid {kind}") from None
        if key != "temporal_pool":
            check_value(preset, key, out[key], known[key])
        elif out[key] < 1:
            raise UsageError(f"--set temporal_pool={value}: must be >= 1")
    return out
