"""The presets: one entry per model name, with the rule of each modality it takes (image, video,
audio), where the rule comes from, and which configuration its defaults are (the main release's
published preprocessing config, or the processor class defaults where that could not be
established). Options are checked here, by type and range, before any rule runs.

Nothing here imports torch, numpy or av.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import replace
from functools import cache

from vlmtool.budget import audio as A
from vlmtool.budget import frontier as F
from vlmtool.budget import hosted as H
from vlmtool.budget import minicpm as M
from vlmtool.budget import presets as P
from vlmtool.budget.presets import Preset
from vlmtool.errors import UsageError

_TX = "transformers models/"
def _merged(presets: list[Preset]) -> dict[str, Preset]:
    """name -> Preset; a name given twice (an image and an audio rule) is one preset with both."""
    out: dict[str, Preset] = {}
    for p in presets:
        if p.name in out:
            q = out[p.name]
            p = replace(q, video=q.video or p.video, audio=q.audio or p.audio, image=q.image or p.image,
                        source=f"{q.source}; {p.source}" if p.source not in q.source else q.source)
        out[p.name] = p
    return out


PRESETS: dict[str, Preset] = _merged([
    Preset("llava-1.5", _TX + "llava/processing_llava.py", "release", P.llava_15),
    Preset("llava-next", _TX + "llava_next/processing_llava_next.py", "release", P.llava_next),
    Preset("llava-onevision", _TX + "llava_onevision/processing_llava_onevision.py", "release", P.llava_onevision, P.llava_onevision_video),
    Preset("qwen2-vl", _TX + "qwen2_vl/image_processing_qwen2_vl.py, video_processing_qwen2_vl.py", "release", P.qwen2_vl, P.qwen_video_tokens),
    Preset("qwen2.5-vl", _TX + "qwen2_vl/image_processing_qwen2_vl.py, video_processing_qwen2_vl.py", "release", P.qwen25_vl, P.qwen_video_tokens),
    Preset("internvl2.5", _TX + "internvl/processing_internvl.py, got_ocr2/image_processing_got_ocr2.py", "release", P.internvl, P.internvl_video),
    Preset("idefics3", _TX + "idefics3/image_processing_idefics3.py", "release", P.idefics3),
    Preset("smolvlm", _TX + "smolvlm/image_processing_smolvlm.py", "release", P.smolvlm),
    Preset("smolvlm-256m", _TX + "smolvlm/image_processing_smolvlm.py", "release", P.smolvlm_256m),
    Preset("gemma3", _TX + "gemma3/processing_gemma3.py, image_processing_gemma3.py", "release", P.gemma3),
    *H.PRESETS,
    Preset("custom", "N_img = N x P_t + P_0 (docs/budget.md)", "release", P.custom, ranges={"tile_size": (0, 1 << 16)}),
    *F.PRESETS,
    *M.PRESETS,
    *A.PRESETS,
])

# Option ranges by name (inclusive), shared by every preset that has the option; a preset may
# narrow or widen one (`ranges`). Unlisted ints are 1 .. 2^31-1, unlisted floats finite and > 0.
# The upper bounds keep every rule's time and memory small (tile searches loop over max_tiles).
_PIXELS, _SIDE, _COUNT = (1, 1 << 34), (1, 1 << 16), (1, 1024)
RANGES: dict[str, tuple] = {
    "min_pixels": _PIXELS, "max_pixels": _PIXELS, "image_size": _SIDE, "tile_size": _SIDE, "patch_size": (1, 4096),
    "patch": (1, 4096), "longest_edge": _SIDE, "shortest_edge": _SIDE, "small_side": _SIDE, "max_long_edge": _SIDE,
    "min_tiles": _COUNT, "max_tiles": _COUNT, "max_num_crops": _COUNT, "pan_and_scan_max_num_crops": _COUNT,
    "pan_and_scan_min_crop_size": _SIDE, "merge": (1, 64), "merge_size": (1, 64), "temporal_patch_size": (1, 64),
    "max_patches": (1, 1 << 20), "pixel_shuffle_ratio": (1 / 64, 1.0), "dynamic_hd": _COUNT, "crop_size": _SIDE, "min_patches": _COUNT, "multiplier": (1e-6, 1e6), "pan_and_scan_min_ratio_to_activate": (1.0, 1e6),
}
CHOICES = {"detail": ("low", "high", "auto"), "media_resolution": H.MEDIA_RESOLUTIONS, "downsample_mode": ("16x", "4x")}
MAX_PINPOINTS = 256


def unknown(name) -> UsageError:
    """One line for a preset name that is not known: the closest names, and where the list is."""
    import difflib

    close = difflib.get_close_matches(str(name).lower(), list(PRESETS), n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return UsageError(f"unknown model preset {name!r}; {hint}(`vlmtool budget --list` lists all {len(PRESETS)})")


def get(name: str) -> Preset:
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise unknown(name) from None


def rule(name: str, modality: str) -> Callable:
    fn = get(name).rule(modality)
    if fn is None:
        have = ", ".join(get(name).modalities)
        raise UsageError(f"{name} has no {modality} rule (it takes: {have}); presets with one: "
                         + ", ".join(p.name for p in PRESETS.values() if p.rule(modality) is not None))
    return fn


@cache
def defaults(name: str, modality: str) -> tuple:
    """(option, default) pairs of a preset's rule for one modality, in signature order."""
    skip = {"width", "height", "num_frames", "seconds"}
    return tuple((k, p.default) for k, p in inspect.signature(rule(name, modality)).parameters.items() if k not in skip)


def _bad(name: str, key: str, value, want: str) -> UsageError:
    return UsageError(f"{name}: option {key}={value!r} must be {want}")


def check_value(name: str, key: str, value, default):
    """The value if it has the default's type and lies in the option's range; else UsageError."""
    low, high = get(name).ranges.get(key) or RANGES.get(key) or (None, None)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise _bad(name, key, value, "true or false")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(name, key, value, "an integer")
        low, high = (1, 2**31 - 1) if low is None else (low, high)
        if not low <= value <= high:
            raise _bad(name, key, value, f"between {low} and {high}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise _bad(name, key, value, "a finite number > 0")
        if low is not None and not low <= value <= high:
            raise _bad(name, key, value, f"between {low} and {high}")
    elif isinstance(default, tuple):  # grid pinpoints: ((height, width), ...)
        ok = isinstance(value, (tuple, list)) and 0 < len(value) <= MAX_PINPOINTS and all(
            isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1 << 16 for v in p)
            for p in value)
        if not ok:
            raise _bad(name, key, value, f"1 to {MAX_PINPOINTS} HEIGHTxWIDTH pairs of positive sizes up to 65536")
    elif isinstance(default, str) and key in CHOICES and value not in CHOICES[key]:
        raise _bad(name, key, value, "one of " + ", ".join(CHOICES[key]))
    return value


def check_options(name: str, modality: str, options: dict) -> None:
    """Unknown options and values of the wrong type or out of range are refused, one line each."""
    known = dict(defaults(name, modality))
    unknown = [k for k in options if k not in known]
    if unknown:
        raise UsageError(f"{name} ({modality}) has no option {', '.join(unknown)}; its options: {', '.join(known) or 'none'}")
    for k, v in options.items():
        check_value(name, k, v, known[k])
