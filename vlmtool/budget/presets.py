"""Visual-token rules, one function per model family, each written from its reference.

Every function takes the image's width and height (pixels) and keyword options with the
published checkpoint's defaults, and returns a Plan: the placeholder tokens the model's
processor inserts (`tokens`), the wrapper tokens around them (image start/end, newlines, tile
markers; counted apart), and the parts (tiles, thumbnail, base image, newline tokens) whose
tokens add up to `tokens`. Boxes are in the original image's pixel coordinates.

This module imports neither torch nor numpy: a quick estimate answers at shell speed.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from vlmtool.errors import UsageError


@dataclass
class Part:
    name: str  # "base", "tile", "thumbnail", "newlines", "image", "crop", ...
    tokens: int
    box: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 in the original image
    grid: tuple[int, int] | None = None  # (row, col) of a tile

    def to_json(self) -> dict:
        d = {"name": self.name, "tokens": self.tokens}
        if self.box is not None:
            d["box"] = list(self.box)
        if self.grid is not None:
            d["grid"] = list(self.grid)
        return d


# The most parts a plan builds (tiles, crops, ...). Counting never builds them: a plan's tokens,
# grid and part count are arithmetic, and its part list is made only when asked for.
MAX_PARTS = 65_536


class Plan:
    """One image's plan. `parts` (tiles, thumbnail, base image, newline tokens, each with its box,
    grid cell and tokens, adding up to `tokens`) is built on first use from `layout` (a list, or
    a function that makes it), and refused past MAX_PARTS; `n_parts` is known without it."""

    __slots__ = (
        "_layout",
        "billed",
        "grid",
        "height",
        "n_parts",
        "note",
        "options",
        "preset",
        "resized",
        "tokens",
        "width",
        "wrapper_tokens",
    )

    def __init__(self, preset: str, width: int, height: int, tokens: int, wrapper_tokens: int = 0,
                 layout: list[Part] | Callable[[], list[Part]] | None = None, grid: tuple[int, int] | None = None,
                 resized: tuple[int, int] | None = None, billed: float | None = None, note: str = "",
                 options: dict | None = None, n_parts: int | None = None):
        self.preset, self.width, self.height, self.tokens, self.wrapper_tokens = preset, width, height, tokens, wrapper_tokens
        self.grid, self.resized, self.billed, self.note, self.options = grid, resized, billed, note, options or {}
        self._layout = layout if layout is not None else []
        self.n_parts = len(self._layout) if isinstance(self._layout, list) else n_parts
        if self.n_parts is None:
            raise ValueError("a plan whose parts are built later needs n_parts")

    @property
    def billed_tokens(self) -> float:
        """What a hosted API bills (patches x multiplier where one applies); else the tokens."""
        return self.tokens if self.billed is None else self.billed

    @property
    def parts(self) -> list[Part]:
        if not isinstance(self._layout, list):
            if self.n_parts > MAX_PARTS:
                raise UsageError(f"{self.preset} at {self.width}x{self.height} has {self.n_parts} parts, more than the "
                                 f"{MAX_PARTS} a plan lists; its token count ({self.tokens}) needs no part list")
            self._layout = self._layout()
            assert len(self._layout) == self.n_parts and sum(p.tokens for p in self._layout) == self.tokens
        return self._layout

    def to_json(self, max_parts: int = MAX_PARTS) -> dict:
        """The plan as JSON; `parts` is null when there are more than max_parts of them."""
        d = {"model": self.preset, "width": self.width, "height": self.height, "tokens": self.tokens,
             "wrapper_tokens": self.wrapper_tokens, "total_tokens": self.tokens + self.wrapper_tokens,
             "grid": list(self.grid) if self.grid else None, "resized": list(self.resized) if self.resized else None,
             "n_parts": self.n_parts, "parts": [p.to_json() for p in self.parts] if self.n_parts <= max_parts else None,
             "options": self.options}
        if self.billed is not None:
            d["billed"] = self.billed
        if self.note:
            d["note"] = self.note
        return d


def check_size(width: int, height: int) -> None:
    if not (isinstance(width, int) and isinstance(height, int)) or width <= 0 or height <= 0:
        raise UsageError(f"image size must be positive integers, got {width}x{height}")


def _box(x0: float, y0: float, x1: float, y1: float, w: int, h: int) -> tuple[int, int, int, int]:
    return (max(0, round(x0)), max(0, round(y0)), min(w, round(x1)), min(h, round(y1)))


def tiles(rows: int, cols: int, tokens: int, width: int, height: int, extra: tuple[Part, ...] = (), name: str = "tile",
           fx: float | None = None, fy: float | None = None) -> Callable[[], list[Part]]:
    """A layout function: rows x cols tiles of `tokens` each, tile (r, c) covering
    [c*fx, (c+1)*fx) x [r*fy, (r+1)*fy) of the original image (even cuts by default), then `extra`."""
    fx = width / cols if fx is None else fx
    fy = height / rows if fy is None else fy
    return lambda: [Part(name, tokens, _box(c * fx, r * fy, (c + 1) * fx, (r + 1) * fy, width, height), (r, c))
                    for r in range(rows) for c in range(cols)] + list(extra)


def _split(total: int, n: int) -> list[tuple[int, int]]:
    """Cut `total` cells into n near-equal consecutive ranges."""
    edges = [total * i // n for i in range(n + 1)]
    return [(edges[i], edges[i + 1]) for i in range(n)]


# ---------------------------------------------------------------------------------- LLaVA


def llava_15(width: int, height: int, image_size: int = 336, patch_size: int = 14) -> Plan:
    """LLaVA-1.5: the image is padded (or resized) to one 336x336 square; CLIP ViT-L/14-336
    gives (336/14)^2 = 576 patch tokens, CLS dropped (vision_feature_select_strategy=default).
    Ref: transformers models/llava/processing_llava.py (num_image_tokens = (size // patch)^2 +
    num_additional_image_tokens - 1); haotian-liu/LLaVA llava/mm_utils.py expand2square."""
    check_size(width, height)
    n = (image_size // patch_size) ** 2
    return Plan("llava-1.5", width, height, n, 0, [Part("image", n, (0, 0, width, height))], resized=(image_size, image_size))


# LLaVA-NeXT 1.6 grid pinpoints (llava-hf/llava-v1.6-*-hf preprocessor_config.json,
# transformers models/llava_next/image_processing_llava_next.py).
LLAVA_NEXT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
# LLaVA-OneVision anyres_max_9: (1..6)x(1..6) tiles of 384 (llava-hf/llava-onevision-qwen2-7b-ov-hf).
LLAVA_OV_PINPOINTS = tuple((384 * i, 384 * j) for i in range(1, 7) for j in range(1, 7))


def select_best_resolution(height: int, width: int, pinpoints) -> tuple[int, int]:
    """(height, width) of the pinpoint that keeps the most of the image's resolution and wastes
    the least. Ref: transformers image_processing_utils.py select_best_resolution (the same as
    haotian-liu/LLaVA llava/mm_utils.py)."""
    best, best_eff, best_waste = None, 0, float("inf")
    for ph, pw in pinpoints:
        scale = min(pw / width, ph / height)
        dw, dh = int(width * scale), int(height * scale)
        eff = min(dw * dh, width * height)
        waste = pw * ph - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (ph, pw), eff, waste
    return best  # type: ignore[return-value]


def _unpadded(height: int, width: int, cur_h: int, cur_w: int) -> tuple[int, int, int, int]:
    """Feature rows/cols kept after removing the padding of the resized image, and the offsets
    of the kept block. Ref: transformers models/llava_next/processing_llava_next.py
    _get_unpadded_features."""
    off_h = off_w = 0
    if width / height > cur_w / cur_h:
        new_h = int(round(height * (cur_w / width), 7))
        pad = (cur_h - new_h) // 2
        off_h = pad
        cur_h -= pad * 2
    else:
        new_w = int(round(width * (cur_h / height), 7))
        pad = (cur_w - new_w) // 2
        off_w = pad
        cur_w -= pad * 2
    return cur_h, cur_w, off_h, off_w


def _anyres(preset: str, width: int, height: int, pinpoints, tile: int, side: int, base: int, max_tiles_pool: int | None) -> Plan:
    """LLaVA-NeXT / OneVision AnyRes: base image + unpadded tile features + one newline per row.

    `side` is the feature grid side of one tile (24 for 336/14, 27 for 384/14); `base` the base
    image's tokens. With `max_tiles_pool` (OneVision's anyres_max_N), a grid larger than 1.1x
    N tiles' worth is bilinearly shrunk by the ratio (transformers processing_llava_onevision.py).
    """
    check_size(width, height)
    if tile < 1 or side < 1:
        raise UsageError(f"{preset}: tile_size must be at least patch_size")
    pinpoints = [tuple(p) for p in pinpoints]
    if any(min(p) < tile for p in pinpoints):
        raise UsageError(f"{preset}: every grid pinpoint must be at least tile_size ({tile}) on each side")
    best_h, best_w = select_best_resolution(height, width, pinpoints)
    rows, cols = best_h // tile, best_w // tile
    cur_h, cur_w, off_h, off_w = _unpadded(height, width, side * rows, side * cols)
    feat_h, feat_w = cur_h, cur_w
    pooled = False
    if max_tiles_pool is not None:
        ratio = math.sqrt(cur_h * cur_w / (max_tiles_pool * side**2))
        if ratio > 1.1:
            feat_h, feat_w = int(cur_h // ratio), int(cur_w // ratio)
            pooled = True
    total = base + feat_h * feat_w + feat_h

    def layout() -> list[Part]:
        # Geometry: the image is scaled to fit (best_w, best_h), centred with padding, cut in tiles.
        scale = min(best_w / width, best_h / height)
        new_w, new_h = min(math.ceil(width * scale), best_w), min(math.ceil(height * scale), best_h)
        pad_x, pad_y = (best_w - new_w) / 2, (best_h - new_h) / 2
        parts = [Part("base", base, (0, 0, width, height))]
        # Tokens of each tile: the kept feature cells inside it (after pooling, the kept grid is cut
        # in near-equal ranges per tile so the tiles add up exactly).
        row_ranges, col_ranges = _split(feat_h, rows), _split(feat_w, cols)

        def cells(r: int, c: int) -> int:
            if pooled:
                return (row_ranges[r][1] - row_ranges[r][0]) * (col_ranges[c][1] - col_ranges[c][0])
            rh = max(0, min((r + 1) * side, off_h + cur_h) - max(r * side, off_h))
            cw = max(0, min((c + 1) * side, off_w + cur_w) - max(c * side, off_w))
            return rh * cw

        for r in range(rows):
            for c in range(cols):
                x0, y0 = (c * tile - pad_x) / scale, (r * tile - pad_y) / scale
                x1, y1 = ((c + 1) * tile - pad_x) / scale, ((r + 1) * tile - pad_y) / scale
                parts.append(Part("tile", cells(r, c), _box(x0, y0, x1, y1, width, height), (r, c)))
        parts.append(Part("newlines", feat_h))
        return parts

    note = f"grid features {feat_h}x{feat_w}" + (f" (pooled from {cur_h}x{cur_w})" if pooled else "")
    return Plan(preset, width, height, total, 0, layout, grid=(rows, cols), resized=(best_w, best_h), note=note, n_parts=rows * cols + 2)


def llava_next(width: int, height: int, grid_pinpoints=LLAVA_NEXT_PINPOINTS, tile_size: int = 336, patch_size: int = 14) -> Plan:
    """LLaVA-NeXT (1.6) AnyRes: 576 base tokens + unpadded 24x24-per-tile features + a newline
    token per feature row (image_newline embeddings are placeholders too). Ref: transformers
    models/llava_next/processing_llava_next.py _get_number_of_features (CLS counted then
    removed under vision_feature_select_strategy=default)."""
    side = tile_size // patch_size
    return _anyres("llava-next", width, height, grid_pinpoints, tile_size, side, side * side, None)


def llava_onevision(width: int, height: int, grid_pinpoints=LLAVA_OV_PINPOINTS, tile_size: int = 384, patch_size: int = 14,
                    max_tiles: int = 9) -> Plan:
    """LLaVA-OneVision anyres_max_9: SigLIP 384/14 -> 27x27 = 729 base tokens (no CLS), AnyRes
    tiles up to 6x6, the unpadded grid shrunk when it exceeds 1.1x 9 tiles' worth, a newline per
    row. Ref: transformers models/llava_onevision/processing_llava_onevision.py
    _get_number_of_features / _get_unpadded_features (vision_feature_select_strategy=full)."""
    side = tile_size // patch_size
    return _anyres("llava-onevision", width, height, grid_pinpoints, tile_size, side, side * side, max_tiles)


def llava_onevision_video(num_frames: int, width: int, height: int, tile_size: int = 384, patch_size: int = 14) -> int:
    """LLaVA-OneVision video: each frame's 27x27 grid pooled 2x2 (bilinear, ceil: 14x14 = 196),
    and one newline token for the whole video. Ref: transformers
    models/llava_onevision/processing_llava_onevision.py (num_video_tokens = (num_frames *
    pooled_height_width * pooled_height_width) + 1)."""
    if tile_size < patch_size:
        raise UsageError("llava-onevision: tile_size must be at least patch_size")
    pooled = math.ceil(tile_size // patch_size / 2)
    return num_frames * pooled * pooled + 1


# ---------------------------------------------------------------------------------- Qwen2-VL


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 14 * 14 * 4 * 1280) -> tuple[int, int]:
    """Ref: transformers models/qwen2_vl/image_processing_qwen2_vl.py smart_resize.

    Differs from qwen-vl-utils (vision_process.py) for a side under factor/2: transformers
    rounds it to 0 and then scales up through the min_pixels branch, qwen-vl-utils clamps it to
    `factor`. Serving engines (vLLM, SGLang) use the transformers processor, so we follow it.
    """
    if max(height, width) / min(height, width) > 200:
        raise UsageError(f"aspect ratio {max(height, width) / min(height, width):.0f} exceeds 200, which the Qwen2-VL processor rejects")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


# Qwen/Qwen2-VL-7B-Instruct preprocessor_config.json: min_pixels 3136, max_pixels 12845056
# (the library class default is 28*28*1280 = 1003520; the published checkpoint's is larger).
QWEN_MIN_PIXELS = 56 * 56
QWEN_MAX_PIXELS = 12_845_056


def _qwen(preset: str, width: int, height: int, min_pixels: int, max_pixels: int, patch_size: int, merge_size: int) -> Plan:
    check_size(width, height)
    rh, rw = smart_resize(height, width, patch_size * merge_size, min_pixels, max_pixels)
    gh, gw = rh // patch_size // merge_size, rw // patch_size // merge_size
    n = gh * gw
    # <|vision_start|> <|image_pad|>*n <|vision_end|>
    return Plan(preset, width, height, n, 2, [Part("image", n, (0, 0, width, height))], grid=(gh, gw), resized=(rw, rh),
                note=f"resized to {rw}x{rh}, {gh}x{gw} merged tokens")


def qwen2_vl(width: int, height: int, min_pixels: int = QWEN_MIN_PIXELS, max_pixels: int = QWEN_MAX_PIXELS, patch_size: int = 14, merge_size: int = 2) -> Plan:
    """Qwen2-VL: smart resize to multiples of 28, ViT patch 14, 2x2 patch merge -> one token per
    28x28 pixels. Ref: transformers models/qwen2_vl/image_processing_qwen2_vl.py
    get_number_of_image_patches (patches / merge_size^2 tokens)."""
    return _qwen("qwen2-vl", width, height, min_pixels, max_pixels, patch_size, merge_size)


def qwen25_vl(width: int, height: int, min_pixels: int = QWEN_MIN_PIXELS, max_pixels: int = QWEN_MAX_PIXELS, patch_size: int = 14, merge_size: int = 2) -> Plan:
    """Qwen2.5-VL: the Qwen2-VL image processor and rule (Qwen/Qwen2.5-VL-7B-Instruct
    preprocessor_config.json: min_pixels 3136, max_pixels 12845056, patch 14, merge 2)."""
    return _qwen("qwen2.5-vl", width, height, min_pixels, max_pixels, patch_size, merge_size)


# Video: transformers models/qwen2_vl/video_processing_qwen2_vl.py class defaults, the same as
# qwen-vl-utils VIDEO_MIN_PIXELS / VIDEO_MAX_PIXELS: 128*28*28 and 768*28*28 per frame.
QWEN_VIDEO_MIN_PIXELS = 128 * 28 * 28
QWEN_VIDEO_MAX_PIXELS = 768 * 28 * 28


def qwen_video_tokens(num_frames: int, width: int, height: int, min_pixels: int = QWEN_VIDEO_MIN_PIXELS,
                      max_pixels: int = QWEN_VIDEO_MAX_PIXELS, patch_size: int = 14, merge_size: int = 2, temporal_patch_size: int = 2) -> int:
    """Frames are padded to a multiple of the temporal patch (2), each pair of frames is one
    grid. Ref: transformers video_processing_qwen2_vl.py get_num_of_video_patches."""
    rh, rw = smart_resize(height, width, patch_size * merge_size, min_pixels, max_pixels)
    grid_t = (num_frames + -num_frames % temporal_patch_size) // temporal_patch_size
    return grid_t * (rh // patch_size) * (rw // patch_size) // (merge_size * merge_size)


# ---------------------------------------------------------------------------------- InternVL


def tiled_canvas(height: int, width: int, tile: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """(cols, rows) of the tiling whose aspect ratio is closest to the image's; ties go to more
    tiles while the image area exceeds half the tiles' area. Ref: OpenGVLab/InternVL
    internvl_chat/internvl/train/dataset.py find_closest_aspect_ratio; transformers
    models/got_ocr2/image_processing_got_ocr2.py get_optimal_tiled_canvas."""
    # (cols, rows) by tile count, in transformers' get_all_supported_aspect_ratios order
    ratios = sorted(((w, h) for w in range(1, max_tiles + 1) for h in range(max(1, -(-min_tiles // w)), max_tiles // w + 1)),
                    key=lambda r: r[0] * r[1])
    aspect = width / height
    area = width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in ratios:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best


def internvl(width: int, height: int, tile_size: int = 448, min_tiles: int = 1, max_tiles: int = 12, use_thumbnail: bool = True,
             tokens_per_tile: int = 256) -> Plan:
    """InternVL 2/2.5 dynamic resolution: the image is resized to cols x rows tiles of 448 px
    (1 to 12 tiles), plus a 448 px thumbnail of the whole image when there is more than one
    tile; each tile is 256 tokens (448/14 = 32, pixel shuffle 0.5 -> 16x16). Wrapped in
    <img></img>. Ref: OpenGVLab/InternVL internvl_chat/internvl/train/dataset.py
    dynamic_preprocess; transformers models/internvl/processing_internvl.py
    (image_seq_length 256) and got_ocr2 get_number_of_image_patches."""
    check_size(width, height)
    if min_tiles < 1 or max_tiles < min_tiles:
        raise UsageError("InternVL needs 1 <= min_tiles <= max_tiles")
    cols, rows = tiled_canvas(height, width, tile_size, min_tiles, max_tiles)
    thumb = (Part("thumbnail", tokens_per_tile, (0, 0, width, height)),) if use_thumbnail and cols * rows > 1 else ()
    n = tokens_per_tile * (rows * cols + len(thumb))
    return Plan("internvl2.5", width, height, n, 2, tiles(rows, cols, tokens_per_tile, width, height, thumb), grid=(rows, cols),
                resized=(cols * tile_size, rows * tile_size), n_parts=rows * cols + len(thumb))


def internvl_video(num_frames: int, width: int, height: int, tokens_per_tile: int = 256) -> int:
    """InternVL video: each frame is one 448 px tile (no splitting, no thumbnail), 256 tokens.
    Ref: transformers models/internvl/processing_internvl.py (video frames: one patch each)."""
    return num_frames * tokens_per_tile


# ---------------------------------------------------------------------------------- Idefics3 / SmolVLM

IDEFICS3_MAX_IMAGE_SIZE = 4096  # transformers models/idefics3/image_processing_idefics3.py MAX_IMAGE_SIZE


def _rescale_to_max_len(height: int, width: int, max_len: int) -> tuple[int, int]:
    """Ref: transformers idefics3 _resize_output_size_rescale_to_max_len (longest edge to
    max_len, upscaling too; the other side made even)."""
    aspect = width / height
    if width >= height:
        width = max_len
        height = int(width / aspect)
        if height % 2 != 0:
            height += 1
    else:
        height = max_len
        width = int(height * aspect)
        if width % 2 != 0:
            width += 1
    return max(height, 1), max(width, 1)


def _scale_below_upper_bound(height: int, width: int, max_len: int) -> tuple[int, int]:
    """Ref: transformers idefics3 _resize_output_size_scale_below_upper_bound."""
    aspect = width / height
    if width >= height and width > max_len:
        width = max_len
        height = int(width / aspect)
    elif height > width and height > max_len:
        height = max_len
        width = int(height * aspect)
    return max(height, 1), max(width, 1)


def _idefics(preset: str, width: int, height: int, longest_edge: int, tile_size: int, image_seq_len: int, do_image_splitting: bool) -> Plan:
    """Idefics3-style splitting. Ref: transformers models/idefics3/image_processing_idefics3.py
    resize, resize_for_vision_encoder, split_images; processing_idefics3.py
    _prompt_split_image / _prompt_single_image for the wrapper tokens."""
    check_size(width, height)
    if not do_image_splitting:
        return Plan(preset, width, height, image_seq_len, 3, [Part("image", image_seq_len, (0, 0, width, height))],
                    resized=(tile_size, tile_size))
    h, w = _rescale_to_max_len(height, width, longest_edge)
    h, w = _scale_below_upper_bound(h, w, IDEFICS3_MAX_IMAGE_SIZE)
    aspect = w / h
    if w >= h:
        w = math.ceil(w / tile_size) * tile_size
        h = int(w / aspect)
        h = math.ceil(h / tile_size) * tile_size
    else:
        h = math.ceil(h / tile_size) * tile_size
        w = int(h * aspect)
        w = math.ceil(w / tile_size) * tile_size
    if h > tile_size or w > tile_size:
        rows = (h - tile_size) // tile_size + 1
        cols = (w - tile_size) // tile_size + 1
        glob = (Part("global", image_seq_len, (0, 0, width, height)),)
        layout = tiles(rows, cols, image_seq_len, width, height, glob, fx=tile_size * width / w, fy=tile_size * height / h)
        # per tile <fake_token_around_image><row_r_col_c>, a newline per row, then
        # \n<fake_token_around_image><global-img> ... <fake_token_around_image>
        wrappers = 2 * rows * cols + rows + 4
        return Plan(preset, width, height, image_seq_len * (rows * cols + 1), wrappers, layout, grid=(rows, cols), resized=(w, h),
                    n_parts=rows * cols + 1)
    return Plan(preset, width, height, image_seq_len, 3, [Part("image", image_seq_len, (0, 0, width, height))], resized=(w, h))


def idefics3(width: int, height: int, longest_edge: int = 4 * 364, tile_size: int = 364, image_seq_len: int = 169,
             do_image_splitting: bool = True) -> Plan:
    """Idefics3 (HuggingFaceM4/Idefics3-8B-Llama3): longest edge to 1456, tiles of 364 px of 169
    tokens each (SigLIP 364/14 = 26, 2x2 pixel shuffle: 676 / 4 = 169) plus the global image."""
    return _idefics("idefics3", width, height, longest_edge, tile_size, image_seq_len, do_image_splitting)


def smolvlm(width: int, height: int, longest_edge: int = 4 * 384, tile_size: int = 384, image_seq_len: int = 81,
            do_image_splitting: bool = True) -> Plan:
    """SmolVLM (HuggingFaceTB/SmolVLM-Instruct): the Idefics3 rule with 384 px tiles of 81
    tokens (SigLIP 384/14 = 27, 3x3 pixel shuffle: 729 / 9), longest edge 1536."""
    return _idefics("smolvlm", width, height, longest_edge, tile_size, image_seq_len, do_image_splitting)


def smolvlm_256m(width: int, height: int, longest_edge: int = 4 * 512, tile_size: int = 512, image_seq_len: int = 64,
                 do_image_splitting: bool = True) -> Plan:
    """SmolVLM-256M (HuggingFaceTB/SmolVLM-256M-Instruct): SigLIP base 512/16 = 32, 4x4 pixel
    shuffle -> 64 tokens a 512 px tile, longest edge 2048."""
    return _idefics("smolvlm-256m", width, height, longest_edge, tile_size, image_seq_len, do_image_splitting)


# ---------------------------------------------------------------------------------- Gemma 3


def pan_and_scan_crops(width: int, height: int, min_crop_size: int = 256, max_num_crops: int = 4, min_ratio_to_activate: float = 1.2) -> tuple[int, int]:
    """(cols, rows) of Gemma 3's pan-and-scan crops, (0, 0) when it does not apply.
    Ref: transformers models/gemma3/image_processing_gemma3.py pan_and_scan."""
    if width >= height:
        if width / height < min_ratio_to_activate:
            return 0, 0
        nw = math.floor(width / height + 0.5)
        nw = min(math.floor(width / min_crop_size), nw)
        nw = min(max_num_crops, max(2, nw))
        nh = 1
    else:
        if height / width < min_ratio_to_activate:
            return 0, 0
        nh = math.floor(height / width + 0.5)
        nh = min(math.floor(height / min_crop_size), nh)
        nh = min(max_num_crops, max(2, nh))
        nw = 1
    cw, ch = math.ceil(width / nw), math.ceil(height / nh)
    if min(cw, ch) < min_crop_size:
        return 0, 0
    return nw, nh


def gemma3(width: int, height: int, image_size: int = 896, tokens_per_image: int = 256, do_pan_and_scan: bool = False,
           pan_and_scan_min_crop_size: int = 256, pan_and_scan_max_num_crops: int = 4, pan_and_scan_min_ratio_to_activate: float = 1.2) -> Plan:
    """Gemma 3: SigLIP at 896x896, pooled to 256 tokens per image; with pan-and-scan (off by
    default) each crop adds 256 more. Wrapped as \\n\\n<start_of_image>...<end_of_image>\\n\\n.
    Ref: transformers models/gemma3/processing_gemma3.py (image_seq_length 256,
    full_image_sequence), image_processing_gemma3.py pan_and_scan; google/gemma-3-4b-it
    preprocessor_config.json."""
    check_size(width, height)
    parts = [Part("image", tokens_per_image, (0, 0, width, height))]
    cols = rows = 0
    if do_pan_and_scan:
        cols, rows = pan_and_scan_crops(width, height, pan_and_scan_min_crop_size, pan_and_scan_max_num_crops, pan_and_scan_min_ratio_to_activate)
        cw, ch = math.ceil(width / cols) if cols else 0, math.ceil(height / rows) if rows else 0
        for r in range(rows):
            for c in range(cols):
                parts.append(Part("crop", tokens_per_image, (c * cw, r * ch, min(width, (c + 1) * cw), min(height, (r + 1) * ch)), (r, c)))
    n = tokens_per_image * len(parts)
    note = "pan-and-scan also adds a short text prefix (tokenizer-dependent, not counted)" if cols else ""
    return Plan("gemma3", width, height, n, 4 * len(parts), parts, grid=(rows, cols) if cols else None,
                resized=(image_size, image_size), note=note)


# ---------------------------------------------------------------------------------- custom


def custom(width: int, height: int, image_size: int = 336, patch_size: int = 14, merge: int = 1, tile_size: int = 0,
           max_tiles: int = 1, thumbnail: bool = True, cls_token: bool = False) -> Plan:
    """The generic rule N_img = N * P_t + P_0: N tiles of P_t tokens plus a thumbnail of P_0.

    P = (image_size / patch_size)^2 / merge^2 tokens per encoded square (+1 with cls_token).
    With tile_size > 0 the image is cut into a grid of tile_size squares (cols = ceil(w /
    tile_size), rows likewise, scaled down to at most max_tiles tiles), each encoded at
    image_size; with thumbnail the whole image is encoded once more (P_0 = P).
    """
    check_size(width, height)
    if image_size % patch_size:
        raise UsageError("image_size must be a multiple of patch_size")
    side = image_size // patch_size
    if merge < 1 or side % merge:
        raise UsageError("merge must divide image_size / patch_size")
    p = (side // merge) ** 2 + (1 if cls_token else 0)
    if tile_size <= 0:
        return Plan("custom", width, height, p, 0, [Part("image", p, (0, 0, width, height))], resized=(image_size, image_size),
                    note=f"N=0 tiles, P_0={p}")
    cols, rows = math.ceil(width / tile_size), math.ceil(height / tile_size)
    if cols * rows > max_tiles:  # the largest grid within max_tiles, closest to the image's shape
        aspect = width / height
        # for each column count, the most rows that fit (fewer rows never win: the grid would be smaller)
        cols, rows = max(((c, min(rows, max_tiles // c)) for c in range(1, min(cols, max_tiles) + 1)),
                         key=lambda g: (g[0] * g[1], -abs(math.log(g[0] / g[1] / aspect))))
    thumb = (Part("thumbnail", p, (0, 0, width, height)),) if thumbnail else ()
    n = p * (rows * cols + len(thumb))
    return Plan("custom", width, height, n, 0, tiles(rows, cols, p, width, height, thumb), grid=(rows, cols), n_parts=rows * cols + len(thumb),
                note=f"N={rows * cols} tiles x P_t={p} + P_0={p if thumbnail else 0}")


# ---------------------------------------------------------------------------------- the registry's entries


MODALITIES = ("image", "video", "audio")


@dataclass(frozen=True)
class Preset:
    name: str
    source: str  # the reference the rule follows
    config: str  # "release": the main release's published config; "class": the processor class defaults
    image: Callable[..., Plan] | None = None
    video: Callable[..., int] | None = None  # (num_frames, width, height, **options); None: each frame is an image
    audio: Callable[..., int] | None = None  # (seconds, **options)
    ranges: dict = field(default_factory=dict)  # option -> (low, high), beside the shared RANGES
    # (frame_times, temporal_patch_size=...) -> the text the processor writes around a video's
    # visual tokens (timestamps, markers: frontier.qwen3_vl_video_text); None: no such text
    video_text: Callable[..., dict] | None = None

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if self.rule(m) is not None)

    def rule(self, modality: str) -> Callable | None:
        if modality == "video":
            return self.video or (self.image and _frames_as_images(self))
        return getattr(self, modality)


def _frames_as_images(preset: Preset) -> Callable[..., int]:
    """A video rule for a preset without one: every frame is encoded as an image (the options
    are the image's, checked by the caller)."""
    image = preset.image

    def frames(num_frames: int, width: int, height: int, **options) -> int:
        return num_frames * image(width, height, **options).tokens if num_frames else 0

    frames.__signature__ = inspect.signature(image)  # the image's options
    return frames
