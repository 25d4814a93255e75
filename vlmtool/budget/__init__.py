"""Exact visual-token accounting per model family, AnyRes plans and video frame budgets.

    >>> from vlmtool.budget import image_tokens, video_tokens
    >>> image_tokens("llava-1.5", 1920, 1080)
    576
    >>> image_tokens("qwen2-vl", 1920, 1080, max_pixels=1003520)
    1222

Nothing here imports torch, open_clip or numpy.
"""

from __future__ import annotations

import inspect
import math
from functools import lru_cache

from vlmtool.budget.presets import PRESETS, Part, Plan, qwen_video_tokens
from vlmtool.errors import UsageError

__all__ = ["PRESETS", "Part", "Plan", "image_plan", "image_tokens", "video_tokens", "video_plan", "preset_options", "parse_options"]


def _preset(name: str):
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}") from None


def preset_options(name: str) -> dict:
    """The keyword options of a preset with their defaults (the published checkpoint's)."""
    return dict(_preset_options(name))


@lru_cache(maxsize=None)
def _preset_options(name: str) -> tuple:
    sig = inspect.signature(_preset(name))
    return tuple((k, p.default) for k, p in sig.parameters.items() if k not in ("width", "height"))


def _check_options(name: str, options: dict, extra: tuple[str, ...] = ()) -> None:
    known = preset_options(name)
    unknown = [k for k in options if k not in known and k not in extra]
    if unknown:
        raise UsageError(f"{name} has no option {', '.join(unknown)}; its options: {', '.join(known) or 'none'}"
                         + (f" (video: {', '.join(extra)})" if extra else ""))


def _freeze(value):
    return tuple(_freeze(v) for v in value) if isinstance(value, (list, tuple)) else value


def image_plan(preset: str, width: int, height: int, **options) -> Plan:
    """The full plan: tokens, wrapper tokens, grid, tiles/thumbnail boxes and tokens per part.

    Plans are cached by (preset, size, options): datasets repeat sizes, so budgeting one costs
    a dictionary lookup. The returned Plan is shared; do not modify it."""
    return _plan(preset, width, height, tuple(sorted((k, _freeze(v)) for k, v in options.items())))


@lru_cache(maxsize=1 << 16)
def _plan(preset: str, width: int, height: int, frozen: tuple) -> Plan:
    fn = _preset(preset)
    options = dict(frozen)
    _check_options(preset, options)
    plan = fn(width, height, **options)
    plan.options = {**preset_options(preset), **plan.options, **options}
    return plan


def image_tokens(preset: str, width: int, height: int, **options) -> int:
    """Visual placeholder tokens of one width x height image under `preset`."""
    return image_plan(preset, width, height, **options).tokens


VIDEO_OPTIONS = ("temporal_pool",)


def video_tokens(preset: str, num_frames: int, width: int, height: int, **options) -> int:
    """Visual tokens of `num_frames` frames of a width x height video under `preset`.

    Family rules: Qwen2-VL/2.5-VL merge frame pairs (temporal patch 2) at the video processor's
    own pixel limits; LLaVA-OneVision pools each frame 2x2 (27 -> 14 per side) and adds one
    newline (transformers processing_llava_onevision.py); InternVL encodes each frame as one
    448 px tile (256 tokens); Gemini counts 258 tokens a frame. Every other preset encodes each
    frame as an image (f x P). `temporal_pool=k` merges k consecutive frames into one.
    """
    if not isinstance(num_frames, int) or num_frames < 0:
        raise UsageError(f"num_frames must be a non-negative integer, got {num_frames!r}")
    _preset(preset)
    pool = int(options.pop("temporal_pool", 1) or 1)
    if pool < 1:
        raise UsageError("temporal_pool must be >= 1")
    frames = math.ceil(num_frames / pool)
    if frames == 0:
        return 0
    if preset in ("qwen2-vl", "qwen2.5-vl"):
        known = ("min_pixels", "max_pixels", "patch_size", "merge_size", "temporal_patch_size")
        bad = [k for k in options if k not in known]
        if bad:
            raise UsageError(f"{preset} video has no option {', '.join(bad)}; its options: {', '.join(known)}, temporal_pool")
        if width <= 0 or height <= 0:
            raise UsageError(f"video size must be positive, got {width}x{height}")
        return qwen_video_tokens(frames, width, height, **options)
    _check_options(preset, options)
    if preset == "llava-onevision":
        side = options.get("tile_size", 384) // options.get("patch_size", 14)
        pooled = math.ceil(side / 2)
        return frames * pooled * pooled + 1
    if preset == "internvl2.5":
        return frames * int(options.get("tokens_per_tile", 256))
    if preset == "gemini":
        return frames * int(options.get("tokens_per_tile", 258))
    return frames * image_tokens(preset, width, height, **options)


def video_plan(preset: str, num_frames: int, width: int, height: int, **options) -> dict:
    per = video_tokens(preset, num_frames, width, height, **options)
    return {"model": preset, "frames": num_frames, "width": width, "height": height, "tokens": per}


def _coerce(value: str, default):
    if isinstance(default, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"expected true/false, got {value!r}")
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    if isinstance(default, tuple):  # grid pinpoints: "336x672,672x336" (height x width)
        out = []
        for item in value.split(","):
            h, _, w = item.strip().lower().partition("x")
            out.append((int(h), int(w)))
        return tuple(out)
    return value


def parse_options(preset: str, pairs: list[str]) -> dict:
    """`key=value` strings -> typed keyword options for `preset` (types from its defaults)."""
    known = {**preset_options(preset), "temporal_pool": 1}
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise UsageError(f"option {pair!r} should look like key=value")
        if key not in known:
            continue  # an option of another preset in a side-by-side run
        try:
            out[key] = _coerce(value.strip(), known[key])
        except ValueError:
            raise UsageError(f"option {key}={value!r} is not a valid {type(known[key]).__name__}") from None
    return out
