"""Hosted APIs: the image tokens Anthropic, OpenAI and Google bill, from their documentation.

The vendors' pages could not be fetched live; each rule names the page and section it follows and
was read from stored copies on 2026-12-06. Where a stored copy lacks a number (a list rendered by
script, a table not kept), the number's other source is named beside it, and docs/budget.md says so.

This module imports neither torch nor numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from vlmtool.budget.presets import Part, Plan, Preset, check_size, tiles
from vlmtool.errors import UsageError

# Read 2026-12-06. Anthropic: "Images and vision", sections "Evaluate image size" and "Calculate image
# costs" (the patch rule); the older page (docs.anthropic.com/en/docs/vision, same sections) for
# the w x h / 750 rule and its table.
ANTHROPIC = "platform.claude.com/docs/en/build-with-claude/vision (Evaluate image size; Calculate image costs), read 2026-12-06"
ANTHROPIC_OLD = "docs.anthropic.com/en/docs/vision (Evaluate image size; Calculate image costs), read 2026-12-06"
# OpenAI: "Images and vision", section "Calculating costs" (tile models: base + tiles; patch models:
# 32 px patches x a multiplier); the pricing page's calculator for GPT-5 mini/nano (see gpt rules).
OPENAI = "platform.openai.com/docs/guides/images-vision (Calculating costs), read 2026-12-06"
GOOGLE = "ai.google.dev/gemini-api/docs/tokens (Multimodal tokens), read 2026-12-06"
GOOGLE3 = "ai.google.dev/gemini-api/docs/media-resolution (Token counts, Gemini 3 models), read 2026-12-06"


# ---------------------------------------------------------------------------------- Anthropic


def claude_fit(width: int, height: int, max_long_edge: int, max_tokens: int, patch: int = 28) -> tuple[int, int]:
    """(width, height) Claude processes: the image as sent if it is within the model's maximal
    native resolution (long edge <= max_long_edge, ceil(w/28) x ceil(h/28) <= max_tokens), else the
    largest size of the same aspect ratio within it: the longest long edge whose short edge,
    rounded, keeps the patches within max_tokens. Anthropic states the rule ("resized to the largest
    possible size that preserves the aspect ratio"), not its rounding; round() is LiteLLM's reading."""
    def patches(w: int, h: int) -> int:
        return math.ceil(w / patch) * math.ceil(h / patch)

    if max(width, height) <= max_long_edge and patches(width, height) <= max_tokens:
        return width, height
    long, short = max(width, height), min(width, height)

    def at(edge: int) -> tuple[int, int]:
        return edge, max(1, round(edge * short / long))

    lo, hi = 1, min(long, max_long_edge)  # patches grow with the edge: the last edge that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if patches(*at(mid)) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    e, s = at(lo)
    return (e, s) if width >= height else (s, e)


def _claude_patches(preset: str, max_long_edge: int, max_tokens: int) -> Callable[..., Plan]:
    def rule(width: int, height: int, max_long_edge: int = max_long_edge, max_tokens: int = max_tokens, patch: int = 28) -> Plan:
        check_size(width, height)
        w, h = claude_fit(width, height, max_long_edge, max_tokens, patch)
        cols, rows = math.ceil(w / patch), math.ceil(h / patch)
        note = f"resized to {w}x{h}, " if (w, h) != (width, height) else ""
        return Plan(preset, width, height, rows * cols, 0, [Part("image", rows * cols, (0, 0, width, height))], grid=(rows, cols),
                    resized=(w, h), note=note + f"padded to {cols * patch}x{rows * patch}: {cols}x{rows} patches of {patch} px")

    rule.__doc__ = (f"Claude ({preset}): {patch_doc(max_long_edge, max_tokens)} Ref: {ANTHROPIC}.")
    return rule


def patch_doc(max_long_edge: int, max_tokens: int) -> str:
    return (f"28x28 px patches, ceil(w/28) x ceil(h/28) visual tokens, after a resize (aspect kept) to the model's maximal native "
            f"resolution ({max_long_edge} px on the long edge, {max_tokens} tokens) and a pad of the bottom and right edges to a multiple of 28.")


# Maximal native resolution by generation. The stored copy of the vision page keeps the rule but not
# its per-model list (rendered by script); these values are the list as quoted by third parties that
# read it: EvolvingLMMs-Lab lmms-eval fork lmms_eval/models/claude.py SUPPORTED_MODEL_CAPS ("Claude
# Fable 5 / Opus 4.8 / Opus 4.7: 4784 tokens AND at most 2576 px long edge; Opus 4.6 / 4.5, Sonnet
# 4.6 / 4.5, Haiku 4.5: 1568 tokens AND at most 1568 px"), LiteLLM token_counter.py
# _ANTHROPIC_IMAGE_LIMITS (claude-high 2576/4784 from 4.7 on, claude-standard 1568/1568).
claude_47 = _claude_patches("claude-4.7", 2576, 4784)
claude_45 = _claude_patches("claude-4.5", 1568, 1568)
claude = _claude_patches("claude", 2576, 4784)


def claude_3(width: int, height: int, max_long_edge: int = 1568, max_tokens: int = 1600, pixels_per_token: int = 750) -> Plan:
    """Claude's older documented rule (Claude 3.x): tokens = width x height / 750 after scaling down
    (aspect kept) so the long edge is at most 1568 px and the image at most ~1600 tokens (about
    1.15 megapixels); Anthropic gave this as an estimate. Ref: ANTHROPIC_OLD (table: 200x200 ~54,
    1000x1000 ~1334, 1092x1092 ~1590)."""
    check_size(width, height)
    s = min(1.0, max_long_edge / max(width, height), math.sqrt(max_tokens * pixels_per_token / (width * height)))
    w, h = max(1, int(width * s)), max(1, int(height * s))
    n = math.ceil(w * h / pixels_per_token)
    return Plan("claude-3", width, height, n, 0, [Part("image", n, (0, 0, width, height))], resized=(w, h), note="Anthropic's documented estimate")


# ---------------------------------------------------------------------------------- OpenAI


def _openai_tiles(preset: str, width: int, height: int, detail: str, base: int, per_tile: int) -> Plan:
    """OpenAI tile models: detail=low is the base tokens; detail=high (and auto) scales the image to
    fit 2048x2048, then (only downward) so its shortest side is 768, and adds per_tile tokens for
    each 512 px tile. Ref: OPENAI (examples: 1024x1024 -> 765, 2048x4096 -> 1105 for gpt-4o)."""
    check_size(width, height)
    if detail not in ("low", "high", "auto"):
        raise UsageError("detail must be low, high or auto")
    if detail == "low":
        return Plan(preset, width, height, base, 0, [Part("base", base, (0, 0, width, height))], resized=(512, 512), options={"detail": detail})
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        s = 2048 / max(w, h)
        w, h = w * s, h * s
    if min(w, h) > 768:
        s = 768 / min(w, h)
        w, h = w * s, h * s
    w, h = max(1, int(w)), max(1, int(h))  # a side under 1 px after scaling (aspect over 2048:1) is 1 px
    cols, rows = math.ceil(w / 512), math.ceil(h / 512)
    layout = tiles(rows, cols, per_tile, width, height, fx=512 * width / w, fy=512 * height / h)
    return Plan(preset, width, height, base + per_tile * rows * cols, 0, lambda: [Part("base", base, (0, 0, width, height))] + layout(),
                grid=(rows, cols), resized=(w, h), options={"detail": detail}, n_parts=1 + rows * cols,
                note="detail=auto is billed as high" if detail == "auto" else "")


def _tile_rule(preset: str, base: int, per_tile: int) -> Callable[..., Plan]:
    def rule(width: int, height: int, detail: str = "high") -> Plan:
        return _openai_tiles(preset, width, height, detail, base, per_tile)

    rule.__doc__ = f"OpenAI {preset}: {base} base tokens + {per_tile} a 512 px tile (detail=low: {base}). Ref: {OPENAI}."
    return rule


def openai_patches(preset: str, width: int, height: int, multiplier: float, max_patches: int = 1536, patch: int = 32) -> Plan:
    """OpenAI patch models: 32 px patches covering the image, at most 1536; a larger image is
    scaled down to fit (the scale shrunk further so whole patches cover it); billed tokens =
    patches x the model's multiplier. Ref: OPENAI (1024x1024 -> 1024 patches; 1800x2400 -> 1452)."""
    check_size(width, height)
    patches = math.ceil(width / patch) * math.ceil(height / patch)
    w, h = float(width), float(height)
    if patches > max_patches:
        r = math.sqrt(patch * patch * max_patches / (width * height))
        r *= min(math.floor(width * r / patch) / (width * r / patch), math.floor(height * r / patch) / (height * r / patch))
        w, h = width * r, height * r
        patches = math.ceil(w / patch) * math.ceil(h / patch)
    patches = min(patches, max_patches)
    billed = round(patches * multiplier, 2)
    return Plan(preset, width, height, patches, 0, [Part("patches", patches, (0, 0, width, height))],
                grid=(math.ceil(h / patch), math.ceil(w / patch)), resized=(int(w), int(h)), billed=billed,
                note=f"billed as {billed} tokens ({patches} patches x {multiplier})")


def _patch_rule(preset: str, multiplier: float) -> Callable[..., Plan]:
    def rule(width: int, height: int, multiplier: float = multiplier, max_patches: int = 1536, patch: int = 32) -> Plan:
        return openai_patches(preset, width, height, multiplier, max_patches, patch)

    rule.__doc__ = f"OpenAI {preset}: 32 px patches (at most 1536), billed x {multiplier}. Ref: {OPENAI}."
    return rule


# Tile models: (base, per 512 px tile). gpt-4o and gpt-4o-mini: the guide's own numbers (stored copy).
# gpt-4.1, gpt-4.5: the guide's tile table (not in the stored copy); community measurements of the API
# bill them as gpt-4o (community.openai.com/t/1262691: 128x64 at high 267, low 97, for gpt-4o,
# gpt-4.1 and gpt-4.5, i.e. 85 + 170 with the same text overhead). o3: LiteLLM's table (75/150),
# consistent with the same thread's o3 counts (86 low, 236 high). gpt-5: LiteLLM's table (70/140) only.
OPENAI_TILES = {"gpt-4o": (85, 170), "gpt-4o-mini": (2833, 5667), "gpt-4.1": (85, 170), "gpt-4.5": (85, 170), "o3": (75, 150),
                "gpt-5": (70, 140)}
# Patch models: the multiplier. gpt-4.1-mini 1.62 (the guide's stored copy); gpt-4.1-nano 2.46 and
# o4-mini 1.72 (the guide's table as quoted in community.openai.com/t/1344040 and /t/1377015). GPT-5
# mini / nano: the guide says 1.62 / 2.46, the pricing page's calculator 1.2 / 1.5, and the bills
# measured in /t/1344040 and /t/1377015 agree with the calculator: budget follows the calculator
# (--set multiplier=1.62 gives the guide's figure).
OPENAI_PATCHES = {"gpt-4.1-mini": 1.62, "gpt-4.1-nano": 2.46, "o4-mini": 1.72, "gpt-5-mini": 1.2, "gpt-5-nano": 1.5}


# ---------------------------------------------------------------------------------- Google


def gemini(width: int, height: int, small_side: int = 384, tile_size: int = 768, tokens_per_tile: int = 258) -> Plan:
    """Google Gemini (2.x): an image with both sides <= 384 px is 258 tokens; a larger one is
    cropped and scaled into 768x768 tiles of 258 tokens each. Google does not publish the exact
    tiling, so tiles = ceil(w/768) x ceil(h/768) here is an estimate. Ref:
    GOOGLE."""
    check_size(width, height)
    if width <= small_side and height <= small_side:
        return Plan("gemini", width, height, tokens_per_tile, 0, [Part("image", tokens_per_tile, (0, 0, width, height))])
    cols, rows = math.ceil(width / tile_size), math.ceil(height / tile_size)
    layout = tiles(rows, cols, tokens_per_tile, width, height, fx=tile_size, fy=tile_size)
    return Plan("gemini", width, height, tokens_per_tile * rows * cols, 0, layout, grid=(rows, cols), n_parts=rows * cols,
                note="tiling is an estimate")


def gemini_video(num_frames: int, width: int, height: int, tokens_per_frame: int = 258) -> int:
    """Gemini video: 258 tokens a frame, whatever its size. Google documents video at 263 tokens a
    second at the default 1 frame a second, without breaking down the 5 beyond the frame's 258;
    audio is counted apart (audio_tokens: 32 a second). Ref: ai.google.dev/gemini-api/docs/tokens."""
    return num_frames * tokens_per_frame


# Gemini 3's media_resolution: tokens an image and a video frame by level. Ref:
# ai.google.dev/gemini-api/docs/media-resolution, "Token counts", Gemini 3 models (the default,
# unspecified, is 1120 an image and 70 a frame; video has no ultra_high).
GEMINI3_IMAGE = {"unspecified": 1120, "low": 280, "medium": 560, "high": 1120, "ultra_high": 2240}
GEMINI3_VIDEO = {"unspecified": 70, "low": 70, "medium": 70, "high": 280}
MEDIA_RESOLUTIONS = tuple(GEMINI3_IMAGE)


def gemini3(width: int, height: int, media_resolution: str = "unspecified") -> Plan:
    """Google Gemini 3: a fixed number of tokens an image by media_resolution, whatever its size:
    low 280, medium 560, high 1120, ultra_high 2240 (per part only), unspecified (the default)
    1120. Google gives these as the (approximate, maximum) tokens allocated to an image. Ref:
    ai.google.dev/gemini-api/docs/media-resolution (Token counts)."""
    check_size(width, height)
    n = GEMINI3_IMAGE[media_resolution]
    return Plan("gemini-3", width, height, n, 0, [Part("image", n, (0, 0, width, height))], note=f"media_resolution {media_resolution}")


def gemini3_video(num_frames: int, width: int, height: int, media_resolution: str = "unspecified") -> int:
    """Google Gemini 3 video: 70 tokens a frame at low, medium and unspecified (the default), 280 at
    high; ultra_high is not offered for video. Ref: ai.google.dev/gemini-api/docs/media-resolution
    (Token counts)."""
    if media_resolution not in GEMINI3_VIDEO:
        raise UsageError(f"gemini-3: media_resolution={media_resolution} is not offered for video (use one of {', '.join(GEMINI3_VIDEO)})")
    return num_frames * GEMINI3_VIDEO[media_resolution]




def _presets() -> list[Preset]:
    from vlmtool.budget.audio import gemini_audio

    out = [Preset(name, OPENAI, "release", _tile_rule(name, *bt)) for name, bt in OPENAI_TILES.items()]
    out += [Preset(name, OPENAI + ("; pricing-page calculator (multiplier)" if name.startswith("gpt-5") else ""), "release",
                   _patch_rule(name, m)) for name, m in OPENAI_PATCHES.items()]
    out += [Preset("claude", ANTHROPIC + " (the current generation: as claude-4.7)", "release", claude),
            Preset("claude-4.7", ANTHROPIC + " (Opus 4.7, Opus 4.8, Fable 5)", "release", claude_47),
            Preset("claude-4.5", ANTHROPIC + " (Opus 4.5/4.6, Sonnet 4.5/4.6, Haiku 4.5)", "release", claude_45),
            Preset("claude-3", ANTHROPIC_OLD + " (the older w x h / 750 rule)", "release", claude_3),
            Preset("gemini", GOOGLE, "release", gemini, gemini_video, gemini_audio),
            Preset("gemini-2.5", GOOGLE + " (as gemini)", "release", gemini, gemini_video, gemini_audio),
            Preset("gemini-3", GOOGLE3, "release", gemini3, gemini3_video)]
    return out


PRESETS = _presets()
