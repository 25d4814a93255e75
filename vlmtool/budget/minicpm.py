"""MiniCPM-V visual-token rules: 4.0 / 4.5 (remote code in the model repositories) and 4.6 (its
processor ships in transformers as `MiniCPMV4_6Processor`). Named by version: `minicpm-v4` and
`minicpm-v-4.5` follow 4.5's remote code, `minicpm-v-4.6` the processor in transformers.

This module imports neither torch nor numpy.
"""

from __future__ import annotations

import math

from vlmtool.budget.presets import Part, Plan, Preset, check_size, tiles
from vlmtool.errors import UsageError

# ---------------------------------------------------------------------------------- MiniCPM-V 4.x


def minicpmv_grid(width: int, height: int, scale_resolution: int, max_slice_nums: int) -> tuple[int, int] | None:
    """(cols, rows) of the slices, or None when the image is not sliced: the slice count is the
    image's area in scale_resolution^2 units (ceil, at most max_slice_nums; 1 means no slicing);
    of the factorisations of that count and of one less and one more (not 1, not past the cap),
    the one whose aspect ratio is nearest the image's in log space, the first on ties. Ref:
    openbmb MiniCPM-V remote code image_processing_minicpmv.py MiniCPMVImageProcessor.get_sliced_grid."""
    log_ratio = math.log(width / height)
    multiple = min(math.ceil(width * height / (scale_resolution * scale_resolution)), max_slice_nums)
    if multiple <= 1:
        return None
    best, best_error = (1, 1), math.inf
    for n in (multiple - 1, multiple, multiple + 1):
        if n == 1 or n > max_slice_nums:
            continue
        for m in range(1, n + 1):
            if n % m == 0:
                error = abs(log_ratio - math.log(m / (n // m)))
                if error < best_error:
                    best, best_error = (m, n // m), error
    return best


def _ensure_divide(length: float, patch_size: int) -> int:
    return max(round(length / patch_size) * patch_size, patch_size)


def minicpmv_resize(width: float, height: float, scale_resolution: int, patch_size: int, allow_upscale: bool) -> tuple[int, int]:
    """(width, height) scaled to about scale_resolution^2 pixels at the same aspect ratio (only
    down unless allow_upscale), rounded to multiples of patch_size. Ref: image_processing_minicpmv.py
    find_best_resize."""
    if width * height > scale_resolution * scale_resolution or allow_upscale:
        r = width / height
        height = int(scale_resolution / math.sqrt(r))
        width = int(height * r)
    return _ensure_divide(width, patch_size), _ensure_divide(height, patch_size)


def minicpm_v4(width: int, height: int, max_slice_nums: int = 9, scale_resolution: int = 448, patch_size: int = 14,
               image_feature_size: int = 64, use_image_id: bool = True, slice_mode: bool = True) -> Plan:
    """MiniCPM-V 4.x (MiniCPM-V 4, 4.5): the image resized to about 448^2 px, plus, when its area
    passes 448^2, up to 9 slices on the grid nearest its aspect ratio; a resampler gives 64 query
    tokens (<unk> placeholders) for the image and for each slice. Wrapped as <image_id>0</image_id>
    <image>...</image>, then <slice>...</slice> per slice with a newline between slice rows.
    Ref: openbmb/MiniCPM-V-4_5 remote code image_processing_minicpmv.py get_slice_image_placeholder,
    get_sliced_grid, slice_image; processing_minicpmv.py (the placeholder replaces each image tag)."""
    check_size(width, height)
    if height in (1, 3):  # transformers' infer_channel_dimension_format reads (1|3, w, 3) as channels-first
        raise UsageError(f"minicpm-v4: {width}x{height}: the processor takes an image {height} px high for channels-first "
                         "and fails to normalize it")
    ids = 3 if use_image_id else 0  # <image_id>, the image's index as text ("0", one token), </image_id>
    whole = Part("image", image_feature_size, (0, 0, width, height))
    if not slice_mode:  # the image goes to the encoder as it is, in patch_size px patches
        if min(width, height) < patch_size:
            raise UsageError(f"minicpm-v4: without slicing {width}x{height} is not resized and is smaller than one {patch_size} px patch")
        return Plan("minicpm-v4", width, height, image_feature_size, ids + 2, [whole], note="not sliced (slice_mode off)")
    grid = minicpmv_grid(width, height, scale_resolution, max_slice_nums)
    if grid is None:
        rw, rh = minicpmv_resize(width, height, scale_resolution, patch_size, True)
        return Plan("minicpm-v4", width, height, image_feature_size, ids + 2, [whole], resized=(rw, rh),
                    note=f"not sliced: the image resized to {rw}x{rh}")
    cols, rows = grid
    sw, sh = minicpmv_resize(width, height, scale_resolution, patch_size, False)
    cw, ch = _ensure_divide(width, cols), _ensure_divide(height, rows)
    pw, ph = minicpmv_resize(cw / cols, ch / rows, scale_resolution, patch_size, True)
    n = rows * cols
    return Plan("minicpm-v4", width, height, image_feature_size * (n + 1), ids + 2 + 2 * n + rows - 1,
                lambda: [whole] + tiles(rows, cols, image_feature_size, width, height, name="slice")(), grid=(rows, cols),
                resized=(pw * cols, ph * rows), n_parts=n + 1,
                note=f"the image at {sw}x{sh} + {cols}x{rows} slices of {pw}x{ph}, {image_feature_size} tokens each")


def minicpm_v4_video(num_frames: int, width: int, height: int, max_slice_nums: int = 1, scale_resolution: int = 448,
                     patch_size: int = 14, image_feature_size: int = 64, slice_mode: bool = True) -> int:
    """MiniCPM-V 4.x video: each frame gets the image placeholder at max_slice_nums 1 (never sliced)
    and without an image id: 64 a frame. MiniCPM-V 4.5's packing of several frames into one
    placeholder (its temporal_ids) is not modeled. Ref: vllm/model_executor/models/minicpmv.py
    get_video_prompt_texts, get_video_max_slice_num; image_processing_minicpmv.py
    get_slice_image_placeholder."""
    return num_frames * minicpm_v4(width, height, max_slice_nums, scale_resolution, patch_size, image_feature_size, False,
                                   slice_mode).tokens


# ---------------------------------------------------------------------------------- MiniCPM-V 4.6


def minicpmv46_grid(width: int, height: int, scale_resolution: int, max_slice_nums: int) -> tuple[int, int] | None:
    """(rows, cols) of MiniCPM-V 4.6's slices, or None when the image is not sliced: 4.5's slice
    count and candidates, but of equally near grids the one with more rows wins. Ref: transformers
    models/minicpmv4_6/image_processing_pil_minicpmv4_6.py get_sliced_grid."""
    log_ratio = math.log(width / height)
    multiple = min(math.ceil(width * height / (scale_resolution * scale_resolution)), max_slice_nums)
    if multiple <= 1:
        return None
    best, best_error = (1, 1), math.inf
    for n in (multiple - 1, multiple, multiple + 1):
        if n == 1 or n > max_slice_nums:
            continue
        for rows in range(1, n + 1):
            if n % rows == 0:
                error = abs(log_ratio - math.log((n // rows) / rows))
                if error < best_error or (error == best_error and rows > best[0]):
                    best, best_error = (rows, n // rows), error
    return best


def minicpmv46_resize(height: float, width: float, scale_resolution: int, unit: int, allow_upscale: bool) -> tuple[int, int]:
    """(height, width) scaled to about scale_resolution^2 px (only down unless allow_upscale), each
    rounded to a multiple of unit = patch x merge (56 px at 16x downsampling), at least one unit.
    Ref: image_processing_pil_minicpmv4_6.py find_best_resize, ensure_divide."""
    if height * width > scale_resolution * scale_resolution or allow_upscale:
        aspect = width / height
        height = int(scale_resolution / math.sqrt(aspect))
        width = int(height * aspect)
    return max(round(height / unit) * unit, unit), max(round(width / unit) * unit, unit)


def minicpm_v46(width: int, height: int, max_slice_nums: int = 9, scale_resolution: int = 448, patch_size: int = 14,
                downsample_mode: str = "16x", use_image_id: bool = True, slice_mode: bool = True) -> Plan:
    """MiniCPM-V 4.6: the image resized to about 448^2 px on whole 56 px cells (patch 14 x merge 4 at
    16x downsampling; 28 px at 4x), and past 448^2 px of area up to 9 slices, each resized the same
    way; a picture of H x W px costs (H/14)(W/14)/16 tokens (/4 at 4x). Wrapped as
    <image_id>0</image_id><image>...</image>, then <slice>...</slice> per slice, a newline between
    slice rows. Ref: transformers models/minicpmv4_6/processing_minicpmv4_6.py replace_image_token,
    image_processing_pil_minicpmv4_6.py _preprocess, get_refine_size."""
    check_size(width, height)
    if downsample_mode not in ("16x", "4x"):
        raise UsageError("minicpm-v-4.6: downsample_mode must be 16x or 4x")
    merge = 2 if downsample_mode == "4x" else 4
    unit = patch_size * merge
    grid = minicpmv46_grid(width, height, scale_resolution, max_slice_nums) if slice_mode else None
    sh, sw = minicpmv46_resize(height, width, scale_resolution, unit, grid is None)
    base = (sh // unit) * (sw // unit)
    ids = 3 if use_image_id else 0
    whole = Part("image", base, (0, 0, width, height))
    if grid is None:
        return Plan("minicpm-v-4.6", width, height, base, ids + 2, [whole], resized=(sw, sh), note=f"not sliced: the image resized to {sw}x{sh}")
    rows, cols = grid
    rw, rh = max(round(width / cols) * cols, cols), max(round(height / rows) * rows, rows)
    ph, pw = minicpmv46_resize(rh / rows, rw / cols, scale_resolution, unit, True)
    per = (ph // unit) * (pw // unit)
    n = rows * cols
    return Plan("minicpm-v-4.6", width, height, base + per * n, ids + 2 + 2 * n + rows - 1,
                lambda: [whole] + tiles(rows, cols, per, width, height, name="slice")(), grid=(rows, cols),
                resized=(pw * cols, ph * rows), n_parts=n + 1,
                note=f"the image at {sw}x{sh} ({base} tokens) + {cols}x{rows} slices of {pw}x{ph}, {per} tokens each")


_MINICPM_RANGES = {"max_slice_nums": (1, 1024), "scale_resolution": (1, 1 << 16), "patch_size": (4, 4096)}
_REMOTE = "openbmb/MiniCPM-V-4_5 remote code image_processing_minicpmv.py, processing_minicpmv.py (not in transformers); vllm models/minicpmv.py (video)"
PRESETS = [
    Preset("minicpm-v4", _REMOTE, "release (see docs)", minicpm_v4, minicpm_v4_video, ranges=_MINICPM_RANGES),
    Preset("minicpm-v-4.5", _REMOTE, "release (see docs)", minicpm_v4, minicpm_v4_video, ranges=_MINICPM_RANGES),
    Preset("minicpm-v-4.6", "transformers models/minicpmv4_6/processing_minicpmv4_6.py, image_processing_pil_minicpmv4_6.py", "class",
           minicpm_v46, ranges=_MINICPM_RANGES),
]
