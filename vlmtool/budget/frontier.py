"""Visual-token rules of the 2025 open-model frontier, one function per family, each written from
the processor that ships in transformers (the version is in tests/budget_vectors/vectors.json),
(MiniCPM-V lives in minicpm.py.)

Defaults are the main release's published preprocessing config where it could be established
(the preset's `config` says "release"), else the processor class defaults ("class"); docs/budget.md
says which, per preset. Counts are the placeholder tokens the processor inserts for the image's
features; text around them (start/end markers, separators, timestamps) is `wrapper_tokens`.

This module imports neither torch nor numpy.
"""

from __future__ import annotations

import math

from vlmtool.budget.presets import (
    Part,
    Plan,
    Preset,
    check_size,
    tiles,
    smart_resize,
    tiled_canvas,
)
from vlmtool.errors import UsageError

_TX = "transformers models/"


def _fixed(preset: str, width: int, height: int, tokens: int, wrappers: int, side: int | None = None, note: str = "") -> Plan:
    """One image, always the same tokens (the image is resized or padded to one square)."""
    check_size(width, height)
    return Plan(preset, width, height, tokens, wrappers, [Part("image", tokens, (0, 0, width, height))],
                resized=(side, side) if side else None, note=note)


# ---------------------------------------------------------------------------------- fixed-length encoders


def paligemma(image_size: int):
    def rule(width: int, height: int, image_size: int = image_size, patch_size: int = 14) -> Plan:
        """PaliGemma: the image resized to one square, (image_size / 14)^2 tokens (256, 1024, 4096 for
        224, 448, 896). Ref: transformers models/paligemma/processing_paligemma.py (image_seq_length
        from the image processor's config; google/paligemma-3b-pt-{224,448,896})."""
        return _fixed(f"paligemma-{image_size}", width, height, (image_size // patch_size) ** 2, 0, image_size)

    return rule


def deepseek_vl(width: int, height: int, num_image_tokens: int = 576) -> Plan:
    """DeepSeek-VL: one 384 px image, 576 tokens (SigLIP 384/16 = 24^2). Ref: transformers
    models/deepseek_vl/processing_deepseek_vl.py (num_image_tokens 576)."""
    return _fixed("deepseek-vl", width, height, num_image_tokens, 0, 384)


def janus(width: int, height: int, num_image_tokens: int = 576) -> Plan:
    """Janus: one 384 px image, 576 tokens, between <begin_of_image> and <end_of_image>. Ref:
    transformers models/janus/processing_janus.py (num_image_tokens 576)."""
    return _fixed("janus", width, height, num_image_tokens, 2, 384)


def florence2(width: int, height: int, image_seq_length: int = 577) -> Plan:
    """Florence-2: one 768 px image, DaViT features 24x24 + 1 = 577 tokens. Ref: transformers
    models/florence2/processing_florence2.py (num_image_tokens = image_processor.image_seq_length,
    577 in microsoft/Florence-2-base and -large preprocessor_config.json)."""
    return _fixed("florence2", width, height, image_seq_length, 0, 768)


def idefics2(width: int, height: int, image_seq_len: int = 64, do_image_splitting: bool = False) -> Plan:
    """Idefics2: a perceiver resampler gives 64 tokens an image; with do_image_splitting (off in the
    class defaults) the image is cut in 4 crops plus the whole image, 5 x 64. Ref: transformers
    models/idefics2/processing_idefics2.py, image_processing_idefics2.py split_image."""
    check_size(width, height)
    whole = Part("image", image_seq_len, (0, 0, width, height))
    if not do_image_splitting:
        return Plan("idefics2", width, height, image_seq_len, 2, [whole])
    hw, hh = width // 2, height // 2
    if not hh:  # the processor divides by a crop's height and fails
        raise UsageError(f"idefics2: {width}x{height} is too short to split in 4 crops")
    crops = [Part("crop", image_seq_len, box, (r, c)) for (r, c), box in
             zip([(0, 0), (0, 1), (1, 0), (1, 1)], [(0, 0, hw, hh), (hw, 0, width, hh), (0, hh, hw, height), (hw, hh, width, height)])]
    return Plan("idefics2", width, height, 5 * image_seq_len, 10, crops + [whole], grid=(2, 2))


def gemma3n(width: int, height: int, image_seq_length: int = 256) -> Plan:
    """Gemma 3n: MobileNet-v5 at 768x768, 256 tokens an image. Ref: transformers
    models/gemma3n/processing_gemma3n.py (image_seq_length 256)."""
    return _fixed("gemma3n", width, height, image_seq_length, 2, 768)


# ---------------------------------------------------------------------------------- tiled (InternVL-style)


def _tiled(preset: str, width: int, height: int, tile_size: int, min_tiles: int, max_tiles: int, tokens_per_tile: int,
           wrappers) -> Plan:
    """GotOcr2 tiling: cols x rows tiles closest to the aspect ratio, plus a thumbnail when > 1."""
    check_size(width, height)
    if max_tiles < min_tiles:
        raise UsageError(f"{preset} needs min_tiles <= max_tiles")
    cols, rows = tiled_canvas(height, width, tile_size, min_tiles, max_tiles)
    n = rows * cols + (1 if rows * cols > 1 else 0)
    thumb = (Part("thumbnail", tokens_per_tile, (0, 0, width, height)),) if n > 1 else ()
    return Plan(preset, width, height, tokens_per_tile * n, wrappers(n), tiles(rows, cols, tokens_per_tile, width, height, thumb),
                grid=(rows, cols), resized=(cols * tile_size, rows * tile_size), n_parts=n)


def internvl3(width: int, height: int, tile_size: int = 448, min_tiles: int = 1, max_tiles: int = 12, tokens_per_tile: int = 256) -> Plan:
    """InternVL3: the InternVL 2.5 rule (1-12 tiles of 448 px + thumbnail, 256 a tile, in
    <img></img>). Ref: transformers models/internvl/processing_internvl.py, got_ocr2
    get_number_of_image_patches (OpenGVLab/InternVL3-*-hf: max_patches 12, 448 px)."""
    return _tiled("internvl3", width, height, tile_size, min_tiles, max_tiles, tokens_per_tile, lambda n: 2)


def aya_vision(width: int, height: int, tile_size: int = 364, min_tiles: int = 1, max_tiles: int = 12, tokens_per_tile: int = 169) -> Plan:
    """Aya Vision: GotOcr2 tiling of 364 px tiles (1-12, + thumbnail), (364 / 28)^2 = 169 tokens a
    tile; wrapped as <|START_OF_IMG|> TILE_i ... TILE_GLOBAL ... <|END_OF_IMG|>. Ref: transformers
    models/aya_vision/processing_aya_vision.py replace_image_token."""
    return _tiled("aya-vision", width, height, tile_size, min_tiles, max_tiles, tokens_per_tile, lambda n: n + 2)


def cohere_canvas(height: int, width: int, tile: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """(cols, rows) needing the least upscaling to fit (or, if every canvas is smaller, the least
    downscaling). Ref: transformers models/cohere2_vision/image_processing_cohere2_vision.py
    get_optimal_tiled_canvas, get_all_supported_aspect_ratios (min_tiles is not used there)."""
    grids = sorted(((w, h) for w in range(1, max_tiles + 1) for h in range(1, max_tiles // w + 1)), key=lambda g: g[0] * g[1])
    scales = [min(g[0] * tile / width, g[1] * tile / height) for g in grids]
    if all(s < 1 for s in scales):
        return grids[scales.index(max(scales))]
    up = [s if s >= 1.0 else 10e9 for s in scales]
    return grids[up.index(min(up))]


def command_a_vision(width: int, height: int, tile_size: int = 512, min_tiles: int = 1, max_tiles: int = 12, patch_size: int = 16) -> Plan:
    """Command A Vision (cohere2_vision): 512 px tiles on the canvas needing the least scaling
    (1-12), plus a thumbnail when more than one; the processor counts patch_size^2 = 256 tokens a
    tile, each followed by a line-break token, between BOI and EOI.
    Ref: transformers models/cohere2_vision/processing_cohere2_vision.py replace_image_token,
    image_processing_cohere2_vision.py get_number_of_image_patches."""
    check_size(width, height)
    cols, rows = cohere_canvas(height, width, tile_size, min_tiles, max_tiles)
    n = 1 + (rows * cols if rows * cols > 1 else 0)
    per = patch_size * patch_size
    thumb = (Part("thumbnail", per, (0, 0, width, height)),) if n > 1 else ()
    layout = tiles(rows, cols, per, width, height, thumb) if n > 1 else [Part("image", per, (0, 0, width, height))]
    return Plan("command-a-vision", width, height, per * n, n + 2, layout, grid=(rows, cols), resized=(cols * tile_size, rows * tile_size),
                n_parts=n)


def _covering_area(w: int, h: int, side: int) -> float:
    """Ref: transformers models/ovis2/image_processing_ovis2.py compute_patch_covering_area."""
    w, h = max(w, h), min(w, h)
    if w > side:
        h, w = h / w * side, side
    return w * h


def ovis2_grid(height: int, width: int, side: int, max_tiles: int, threshold: float = 0.9) -> tuple[int, int]:
    """(cols, rows) of the fewest tiles covering more than 90% of the image at tile resolution.
    The reference splits the image with the tuple's first number as rows while it crops with it
    as columns; both are kept. Ref: transformers models/ovis2/image_processing_ovis2.py
    get_min_tile_covering_grid, split_image_into_grid."""
    grids = sorted(((a, b) for a in range(1, max_tiles + 1) for b in range(1, max_tiles // a + 1)), key=lambda g: g[0] * g[1])
    scored = []
    for g in grids:
        rh, cw = height // g[0], width // g[1]
        area = 0.0
        for r in range(g[0]):
            for c in range(g[1]):
                x1 = width if c == g[1] - 1 else (c + 1) * cw
                y1 = height if r == g[0] - 1 else (r + 1) * rh
                area += _covering_area(x1 - c * cw, y1 - r * rh, side)
        scored.append((g, area / (width * height)))
    good = [x for x in scored if x[1] > threshold]
    if good:
        return min(good, key=lambda x: (x[0][0] * x[0][1], -x[1]))[0]
    return min(scored, key=lambda x: (-x[1], x[0][0] * x[0][1]))[0]


def ovis2(width: int, height: int, tile_size: int = 384, image_seq_length: int = 256, crop_to_patches: bool = False,
          max_tiles: int = 12, use_covering_area_grid: bool = True) -> Plan:
    """Ovis2: 256 tokens for the whole image; with crop_to_patches (off in the class defaults) the
    image is also cut in the fewest tiles covering 90% of it (or the closest aspect ratio), 256
    each, between <IMG_START> <IMG_GRID> ... <IMG_END> with column and row separators. Ref:
    transformers models/ovis2/processing_ovis2.py replace_image_token, image_processing_ovis2.py."""
    check_size(width, height)
    whole = Part("image", image_seq_length, (0, 0, width, height))
    if not crop_to_patches or max_tiles <= 1:
        return Plan("ovis2", width, height, image_seq_length, 3, [whole], grid=(1, 1))
    if use_covering_area_grid:
        cols, rows = ovis2_grid(height, width, tile_size, max_tiles)
    else:
        cols, rows = tiled_canvas(height, width, tile_size, 1, max_tiles)
    n = rows * cols
    if n == 1:
        return Plan("ovis2", width, height, image_seq_length, 3, [whole], grid=(1, 1))
    return Plan("ovis2", width, height, image_seq_length * (n + 1), 3 + rows * (cols - 1) + rows - 1,
                lambda: [whole] + tiles(rows, cols, image_seq_length, width, height)(), grid=(rows, cols),
                resized=(cols * tile_size, rows * tile_size), n_parts=n + 1)


def _ratio(a: float, b: float) -> float:
    """a / b as torch divides floats: a positive over 0 is inf, a negative -inf, 0 over 0 nan."""
    if b:
        return a / b
    return math.nan if a == 0 else math.copysign(math.inf, a)


def molmo_tiling(height: int, width: int, window: int, max_crops: int) -> tuple[int, int]:
    """(rows, cols) needing the least upscaling (else the least downscaling), candidates ordered by
    area then rows; the sizes may be <= 0 for a small image, as in the reference. Ref: transformers
    models/molmo2/image_processing_molmo2.py select_tiling."""
    tilings = sorted(((h, w) for h in range(1, max_crops + 1) for w in range(1, max_crops + 1) if h * w <= max_crops),
                     key=lambda t: (t[0] * t[1], t[0]))
    scales = [min(_ratio(t[0] * window, height), _ratio(t[1] * window, width)) for t in tilings]
    if all(s < 1 for s in scales):
        return tilings[scales.index(max(scales))]
    up = [s if not s < 1.0 else 10e9 for s in scales]
    return tilings[up.index(min(up))]


def molmo(width: int, height: int, crop_size: int = 378, patch_size: int = 14, max_crops: int = 8, overlap_margin: int = 4,
          pooling: int = 2) -> Plan:
    """Molmo (Molmo2, the Molmo processor in transformers): a 378 px low-resolution view plus up to 8
    overlapping 378 px crops (4-patch margins) on the best-fitting canvas, patch features pooled
    2x2; tokens = the pooled low-res grid (14x14) + the pooled high-res grid; a column token ends
    each row. Ref: transformers models/molmo2/image_processing_molmo2.py get_image_grid_and_crops,
    processing_molmo2.py replace_image_token."""
    check_size(width, height)
    window_patches = crop_size // patch_size - 2 * overlap_margin
    if window_patches < 1:
        raise UsageError("molmo: crop_size / patch_size must exceed twice overlap_margin")
    margin = 2 * overlap_margin * patch_size
    rows, cols = molmo_tiling(height - margin, width - margin, window_patches * patch_size, max_crops)
    high_h = -(-(rows * window_patches + 2 * overlap_margin) // pooling)
    high_w = -(-(cols * window_patches + 2 * overlap_margin) // pooling)
    low = -(-(crop_size // patch_size) // pooling)
    n = low * low + high_h * high_w
    layout = [Part("image", low * low, (0, 0, width, height)), Part("crops", high_h * high_w, (0, 0, width, height))]
    return Plan("molmo", width, height, n, 4 + low + high_h, layout, grid=(rows, cols),
                note=f"{rows}x{cols} overlapping crops, pooled grid {high_h}x{high_w} + {low}x{low}")


# ---------------------------------------------------------------------------------- Phi-4-multimodal


def phi4_mm(width: int, height: int, crop_size: int = 448, patch_size: int = 14, dynamic_hd: int = 36) -> Plan:
    """Phi-4-multimodal: the image is padded onto cols x rows crops of 448 px (ceil of its size, or
    the closest aspect ratio within 36 crops), each crop's 32x32 patch mask pooled 2x2; tokens =
    256 (global image) + 1 + the kept pooled cells + one newline per pooled row + 16. Ref:
    transformers models/phi4_multimodal/image_processing_phi4_multimodal.py dynamic_preprocess and
    the num_img_tokens formula of _preprocess."""
    check_size(width, height)
    if crop_size % patch_size:
        raise UsageError("phi4-mm: crop_size must be a multiple of patch_size")
    cols, rows = math.ceil(width / crop_size), math.ceil(height / crop_size)
    if cols * rows > dynamic_hd:  # the reference's find_closest_aspect_ratio over its target ratios
        cols, rows = tiled_canvas(height, width, crop_size, 1, dynamic_hd)
    tw, th = crop_size * cols, crop_size * rows
    if tw / width < th / height:
        new_w, new_h, pad_w, pad_h = tw, int(height * (tw / width)), 0, th - int(height * (tw / width))
    else:
        new_w, new_h, pad_w, pad_h = int(width * (th / height)), th, tw - int(width * (th / height)), 0
    if min(new_h, th) < 10 or min(new_w, tw) < 10:
        raise UsageError(f"phi4-mm: {width}x{height} is too extreme an aspect ratio (resized to {new_w}x{new_h})")
    mask = crop_size // patch_size
    kept_cols = mask * cols - (pad_w // patch_size if pad_w >= patch_size else 0)
    kept_rows = mask * rows - (pad_h // patch_size if pad_h >= patch_size else 0)
    pooled_cols, pooled_rows = -(-kept_cols // 2), -(-kept_rows // 2)  # the mask read every other cell
    base = (mask // 2 + mask % 2) ** 2
    n = base + 1 + pooled_rows * pooled_cols + pooled_rows + 16
    crops = tiles(rows, cols, 0, width, height, fx=crop_size * width / new_w, fy=crop_size * height / new_h, name="crop")

    def layout() -> list[Part]:  # tokens by part: global 256 + 16 newlines + 1; each crop its kept pooled cells
        parts = [Part("global", base + 16 + 1, (0, 0, width, height))]
        per = mask // 2 + mask % 2
        for p in crops():
            r, c = p.grid
            cells_r = max(0, min(per, pooled_rows - r * per))
            cells_c = max(0, min(per, pooled_cols - c * per))
            parts.append(Part("crop", cells_r * cells_c, p.box, p.grid))
        parts.append(Part("newlines", pooled_rows))
        return parts

    return Plan("phi4-mm", width, height, n, 0, layout, grid=(rows, cols), resized=(tw, th), n_parts=rows * cols + 2)


# ---------------------------------------------------------------------------------- Llama 4


def llama4_canvas(height: int, width: int, tile: int, max_tiles: int) -> tuple[int, int]:
    """(rows, cols) of Llama 4's canvas: the smallest upscale that fits, else the least downscale;
    ties go to the smaller area. Ref: transformers models/llama4/image_processing_llama4.py
    find_supported_resolutions, get_best_fit (resize_to_max_canvas False)."""
    grids = []
    for n in range(max_tiles, 0, -1):  # find_supported_resolutions' order: by ratio, then chunk count
        grids += [(f, n // f) for f in range(1, n + 1) if n % f == 0]
    by_ratio: dict[float, list] = {}
    for h, w in grids:
        by_ratio.setdefault(h / w, []).append((h, w))
    grids = [g for v in by_ratio.values() for g in v]
    scales = [min(g[1] * tile / width, g[0] * tile / height) for g in grids]
    ups = [s for s in scales if s >= 1]
    best = min(ups) if ups else max(scales)
    chosen = [g for g, s in zip(grids, scales) if s == best]
    return min(chosen, key=lambda g: g[0] * g[1])  # argmin keeps the first of equal areas


def llama4(width: int, height: int, tile_size: int = 336, max_tiles: int = 16, patch_size: int = 14, pixel_shuffle_ratio: float = 0.5) -> Plan:
    """Llama 4: tiles of 336 px on the best-fitting canvas of up to 16 tiles, (336/14)^2 / 4 = 144
    tokens a tile, plus a global tile when there is more than one. Ref: transformers
    models/llama4/processing_llama4.py _prompt_split_image; image_processing_llama4.py
    (meta-llama/Llama-4-Scout-17B-16E-Instruct: max_patches 16, size 336)."""
    check_size(width, height)
    rows, cols = llama4_canvas(height, width, tile_size, max_tiles)
    per = (tile_size // patch_size) ** 2 // round(1.0 / pixel_shuffle_ratio**2)
    n = rows * cols
    glob = (Part("global", per, (0, 0, width, height)),)
    if n == 1:
        return Plan("llama4", width, height, per, 3, list(glob), grid=(1, 1), resized=(tile_size, tile_size))
    # <|image_start|>, x separators between tiles, a y separator after each row, <|image|>, <|image_end|>
    return Plan("llama4", width, height, per * (n + 1), rows * (cols - 1) + rows + 3, tiles(rows, cols, per, width, height, glob),
                grid=(rows, cols), resized=(cols * tile_size, rows * tile_size), n_parts=n + 1)


# ---------------------------------------------------------------------------------- Pixtral / Mistral 3


def pixtral_size(height: int, width: int, longest_edge: int, patch: int) -> tuple[int, int]:
    """(height, width) after Pixtral's resize: fit longest_edge (floor), round up to patches.
    Ref: transformers models/pixtral/image_processing_pixtral.py get_resize_output_image_size."""
    ratio = max(height / longest_edge, width / longest_edge)
    if ratio > 1:
        height, width = math.floor(height / ratio), math.floor(width / ratio)
    return ((height - 1) // patch + 1) * patch, ((width - 1) // patch + 1) * patch


def _pixtral(preset: str, width: int, height: int, longest_edge: int, patch_size: int, spatial_merge_size: int) -> Plan:
    """The processor resizes onto whole tokens of patch x merge px (PixtralProcessor._process_images
    passes patch_size * spatial_merge_size to the image processor), rounding each side up: a tiny
    image costs one token and a thin one keeps its partial row or column."""
    check_size(width, height)
    merged = patch_size * spatial_merge_size
    h, w = pixtral_size(height, width, longest_edge, merged)
    rows, cols = h // merged, w // merged
    if rows == 0 or cols == 0:  # the fitted side floors to 0 px (aspect ratio past longest_edge:1)
        raise UsageError(f"{preset}: {width}x{height} fits {longest_edge} px as a 0 px side, which the processor cannot resize to")
    # [IMG] per token, [IMG_BREAK] after each row but the last, which ends with [IMG_END]
    return Plan(preset, width, height, rows * cols, rows, [Part("image", rows * cols, (0, 0, width, height))], grid=(rows, cols),
                resized=(w, h), note=f"{rows} rows of {cols} tokens, a break or end token after each")


def pixtral(width: int, height: int, longest_edge: int = 1024, patch_size: int = 16, spatial_merge_size: int = 1) -> Plan:
    """Pixtral 12B: longest edge to 1024, a token per 16 px patch, a break token per row. Ref:
    transformers models/pixtral/processing_pixtral.py replace_image_token (mistral-community/pixtral-12b)."""
    return _pixtral("pixtral", width, height, longest_edge, patch_size, spatial_merge_size)


def mistral3(width: int, height: int, longest_edge: int = 1540, patch_size: int = 14, spatial_merge_size: int = 2) -> Plan:
    """Mistral Small 3.1 / 3.2 (mistral3): the Pixtral image processor at 14 px patches, longest edge
    1540, and 2x2 spatial merge: the image resized onto whole 28 px cells (rounding up), a token per
    cell. Ref: transformers models/pixtral/processing_pixtral.py _process_images, replace_image_token,
    _get_num_multimodal_tokens; mistralai/Mistral-Small-3.1-24B-Instruct-2503."""
    return _pixtral("mistral3", width, height, longest_edge, patch_size, spatial_merge_size)


# ---------------------------------------------------------------------------------- Qwen3-VL, GLM-4.1V


def temporal_smart_resize(num_frames: int, height: int, width: int, temporal_factor: int, factor: int, min_pixels: int,
                          max_pixels: int) -> tuple[int, int]:
    """Qwen3-VL video and GLM-4.1V smart resize: the pixel budget covers all frames. Ref:
    transformers models/glm4v/image_processing_glm4v.py smart_resize (= qwen3_vl's video one)."""
    if num_frames < temporal_factor:
        raise UsageError(f"{num_frames} frame(s): the processor needs at least temporal_patch_size={temporal_factor}")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise UsageError(f"aspect ratio {max(height, width) / min(height, width):.0f} exceeds 200, which the processor rejects")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _grid_plan(preset: str, width: int, height: int, rh: int, rw: int, patch_size: int, merge_size: int) -> Plan:
    gh, gw = rh // patch_size // merge_size, rw // patch_size // merge_size
    return Plan(preset, width, height, gh * gw, 2, [Part("image", gh * gw, (0, 0, width, height))], grid=(gh, gw), resized=(rw, rh),
                note=f"resized to {rw}x{rh}, {gh}x{gw} merged tokens")


def qwen3_vl(width: int, height: int, min_pixels: int = 65_536, max_pixels: int = 16_777_216, patch_size: int = 16, merge_size: int = 2) -> Plan:
    """Qwen3-VL: Qwen2-VL's smart resize at 16 px patches (multiples of 32), one token per 32x32 px.
    Defaults: Qwen/Qwen3-VL preprocessor_config.json (size shortest_edge 65536, longest_edge
    16777216, patch 16), not the Qwen2-VL class defaults. Ref: transformers
    models/qwen2_vl/image_processing_qwen2_vl.py smart_resize, get_number_of_image_patches."""
    check_size(width, height)
    if min_pixels > max_pixels:
        raise UsageError("qwen3-vl needs min_pixels <= max_pixels")
    rh, rw = smart_resize(height, width, patch_size * merge_size, min_pixels, max_pixels)
    return _grid_plan("qwen3-vl", width, height, rh, rw, patch_size, merge_size)


def qwen3_vl_video(num_frames: int, width: int, height: int, min_pixels: int = 128 * 32 * 32, max_pixels: int = 32 * 32 * 768,
                   patch_size: int = 16, merge_size: int = 2, temporal_patch_size: int = 2, cap_pixels_per_frame: bool = False,
                   max_video_tokens: int = 768) -> int:
    """Qwen3-VL video: frame pairs merged, the pixel budget shared by all frames (the class
    defaults 131072..786432: the release's video config could not be checked offline). With
    cap_pixels_per_frame (qwen-vl-utils' rule; off by default in transformers 5.25) each frame's
    pixels are capped at min(max_video_tokens x 32^2, max_pixels // frames), floored at 1.05 x
    min_pixels, so the budget grows with the frame count. Each pair is wrapped in
    <|vision_start|>..<|vision_end|> after a "<t seconds>" timestamp text, counted apart
    (qwen3_vl_video_text). Ref: transformers models/qwen3_vl/video_processing_qwen3_vl.py
    get_num_of_video_patches, resize; processing_qwen3_vl.py replace_video_token."""
    factor = patch_size * merge_size
    if cap_pixels_per_frame and num_frames:
        per_frame = max(min(max_video_tokens * factor * factor, max_pixels // num_frames), int(min_pixels * 1.05))
        max_pixels = per_frame * num_frames
    rh, rw = temporal_smart_resize(num_frames, height, width, temporal_patch_size, factor, min_pixels, max_pixels)
    grid_t = -(-num_frames // temporal_patch_size)
    return grid_t * (rh // patch_size) * (rw // patch_size) // (merge_size * merge_size)


def glm41v(width: int, height: int, min_pixels: int = 112 * 112, max_pixels: int = 28 * 28 * 15000, patch_size: int = 14,
           merge_size: int = 2, temporal_patch_size: int = 2) -> Plan:
    """GLM-4.1V: the temporal smart resize for a 2-frame still (the budget covers 2 x h x w), 14 px
    patches, 2x2 merge: a token per 28x28 px. Class defaults (the release config could not be
    checked offline). Ref: transformers models/glm4v/image_processing_glm4v.py
    get_number_of_image_patches."""
    check_size(width, height)
    rh, rw = temporal_smart_resize(temporal_patch_size, height, width, temporal_patch_size, patch_size * merge_size, min_pixels, max_pixels)
    return _grid_plan("glm4.1v", width, height, rh, rw, patch_size, merge_size)


def glm41v_video(num_frames: int, width: int, height: int, min_pixels: int = 112 * 112, max_pixels: int = 28 * 28 * 2 * 30000,
                 patch_size: int = 14, merge_size: int = 2, temporal_patch_size: int = 2) -> int:
    """GLM-4.1V video: frame pairs merged, the pixel budget shared by all frames; each pair's tokens
    are followed by its timestamp in whole seconds, counted apart (glm41v_video_text). Ref:
    transformers models/glm4v/video_processing_glm4v.py get_num_of_video_patches."""
    rh, rw = temporal_smart_resize(num_frames, height, width, temporal_patch_size, patch_size * merge_size, min_pixels, max_pixels)
    grid_t = -(-num_frames // temporal_patch_size)
    return grid_t * (rh // patch_size) * (rw // patch_size) // (merge_size * merge_size)


# ---------------------------------------------------------------------------------- video timestamp text


def qwen_timestamp_tokens(text: str) -> int:
    """Tokens of one Qwen3-VL timestamp text "<12.5 seconds>": Qwen2's pre-tokenizer (transformers
    models/qwen2/tokenization_qwen2.py PRETOKENIZE_REGEX) cuts it into "<", one piece a digit
    (\\p{N} matches a single digit), ".", " seconds" and ">"; each piece is one token of the Qwen2
    vocabulary (single bytes, and "Ġseconds", id 6486 in the Qwen2.5 vocabulary that Qwen3-VL
    shares). The special tokens around it are split off before pre-tokenization."""
    return sum(c.isdigit() for c in text) + 4


def qwen3_vl_video_text(frame_times: list[float], temporal_patch_size: int = 2) -> dict:
    """The text Qwen3-VL's processor writes around a video's visual tokens: before each temporal
    group f"<{t:.1f} seconds>", t the mean of the group's first and last frame times (idx / fps;
    a short last group repeats the last frame), then <|vision_start|>, the group's tokens and
    <|vision_end|>. The chat template's own <|vision_start|>..<|vision_end|> around the video
    stays, so the markers are 2 + 2 a group. Ref: transformers
    models/qwen3_vl/processing_qwen3_vl.py replace_video_token, _calculate_timestamps."""
    times = list(frame_times)
    if times and len(times) % temporal_patch_size:
        times += [times[-1]] * (temporal_patch_size - len(times) % temporal_patch_size)
    groups = [(times[i] + times[i + temporal_patch_size - 1]) / 2 for i in range(0, len(times), temporal_patch_size)]
    text = [f"<{t:.1f} seconds>" for t in groups]
    stamps = sum(qwen_timestamp_tokens(x) for x in text)
    markers = 2 + 2 * len(groups)
    return {"timestamp_text": text, "timestamp_chars": sum(map(len, text)), "timestamp_tokens": stamps,
            "marker_tokens": markers, "wrapper_tokens": markers + stamps}


def glm41v_video_text(frame_times: list[float], temporal_patch_size: int = 2) -> dict:
    """The text GLM-4.1V's processor writes around a video's visual tokens: for each temporal
    group <|begin_of_image|>, the group's tokens, <|end_of_image|> and then str(int(t)), t the
    time (idx / fps) of every second frame (the group's first), the last repeated if short. The
    timestamps' token count depends on GLM's tokenizer, which could not be read offline: their
    characters are given, the markers (2 a group, + <|begin_of_video|>..<|end_of_video|> from the
    chat template) are counted. Ref: transformers models/glm4v/processing_glm4v.py
    replace_video_token, replace_frame_token_id."""
    n_groups = -(-len(frame_times) // temporal_patch_size)
    stamps = list(frame_times)[::2][:n_groups]
    while len(stamps) < n_groups:
        stamps.append(stamps[-1] if stamps else 0)
    text = [str(int(t)) for t in stamps]
    return {"timestamp_text": text, "timestamp_chars": sum(map(len, text)), "timestamp_tokens": None,
            "marker_tokens": 2 + 2 * n_groups, "wrapper_tokens": None}


PRESETS = [
    Preset("qwen3-vl", _TX + "qwen2_vl/image_processing_qwen2_vl.py, qwen3_vl/video_processing_qwen3_vl.py, processing_qwen3_vl.py",
           "release (image), class (video)", qwen3_vl, qwen3_vl_video, video_text=qwen3_vl_video_text),
    Preset("glm4.1v", _TX + "glm4v/image_processing_glm4v.py, video_processing_glm4v.py, processing_glm4v.py", "class", glm41v, glm41v_video,
           video_text=glm41v_video_text),
    Preset("llama4", _TX + "llama4/image_processing_llama4.py, processing_llama4.py", "release", llama4),
    Preset("pixtral", _TX + "pixtral/image_processing_pixtral.py, processing_pixtral.py", "release", pixtral),
    Preset("mistral3", _TX + "pixtral/image_processing_pixtral.py, processing_pixtral.py (mistral3)", "release", mistral3),
    Preset("aya-vision", _TX + "aya_vision/processing_aya_vision.py, got_ocr2/image_processing_got_ocr2.py", "class", aya_vision),
    Preset("command-a-vision", _TX + "cohere2_vision/image_processing_cohere2_vision.py, processing_cohere2_vision.py", "class",
            command_a_vision),
    Preset("internvl3", _TX + "internvl/processing_internvl.py, got_ocr2/image_processing_got_ocr2.py", "release", internvl3),
    Preset("deepseek-vl", _TX + "deepseek_vl/processing_deepseek_vl.py", "class", deepseek_vl),
    Preset("janus", _TX + "janus/processing_janus.py", "class", janus),
    Preset("florence2", _TX + "florence2/processing_florence2.py", "release", florence2),
    Preset("paligemma-224", _TX + "paligemma/processing_paligemma.py", "release", paligemma(224)),
    Preset("paligemma-448", _TX + "paligemma/processing_paligemma.py", "release", paligemma(448)),
    Preset("paligemma-896", _TX + "paligemma/processing_paligemma.py", "release", paligemma(896)),
    Preset("idefics2", _TX + "idefics2/processing_idefics2.py, image_processing_idefics2.py", "class", idefics2),
    Preset("gemma3n", _TX + "gemma3n/processing_gemma3n.py", "class", gemma3n),
    Preset("phi4-mm", _TX + "phi4_multimodal/image_processing_phi4_multimodal.py", "class", phi4_mm),
    Preset("molmo", _TX + "molmo2/image_processing_molmo2.py, processing_molmo2.py (Molmo2)", "class", molmo,
           ranges={"max_crops": (1, 64)}),
    Preset("ovis2", _TX + "ovis2/processing_ovis2.py, image_processing_ovis2.py", "class", ovis2, ranges={"max_tiles": (1, 64)}),
]
