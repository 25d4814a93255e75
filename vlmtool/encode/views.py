"""The views of a sample, in pixels: which crops of an image (or which frames of a video) the
tower encodes, and the meta that says where each view's rows sit and how the language model
reads them. No torch here: the views are PIL images, preprocessed by the caller with the
tower's own transform (in loader workers).

Kinds of view (`meta["views"][i]["kind"]`):
- `image`: the whole image, the tower's own preprocessing (the default);
- `base`, `tile`: LLaVA-NeXT AnyRes (a plan with a `newlines` part): the whole image, then the
  S x S crops of the plan's canvas (the image resized to fit `plan.resized`, aspect kept,
  centred, padded black);
- `tile`, `thumbnail`: InternVL-style tiling (no newlines): the image resized to the grid's
  canvas without keeping aspect, cut in tiles, plus the thumbnail (the whole image at S x S);
- `frame`: one decoded video frame, its timestamp kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vlmtool.errors import UsageError

MAX_VIEWS = 64  # a plan's tile count comes from input sizes: capped before we crop
MAX_FRAMES = 256  # frames of one video, whatever the budget says


@dataclass(frozen=True)
class Tower:
    """What the views need to know about the tower and the job (plain data, picklable)."""

    size: int  # S: the tower's input side
    patch: int  # p: its patch size
    cls: bool = False
    anyres: str | None = None
    frame_budget: int | None = None
    select: str = "uniform"
    sample_fps: float = 1.0

    @property
    def side(self) -> int:
        return self.size // self.patch

    @property
    def rows(self) -> int:
        """Rows one view writes: the patch grid, plus the class token with --cls."""
        return self.side * self.side + int(self.cls)

    def plan_options(self) -> dict:
        """Budget's options that put the preset on this tower: tile size, patch size, tokens a tile,
        and LLaVA-NeXT's grid pinpoints rescaled from its tile size to the tower's (1x2, 2x2, ...
        tiles of S, so the canvas is whole tiles)."""
        from vlmtool.budget import preset_options

        known = preset_options(self.anyres)
        opts = {"tile_size": self.size}
        if "grid_pinpoints" in known:  # the preset's grids in tiles, at this tower's tile size
            t = known["tile_size"]
            opts["grid_pinpoints"] = tuple((h * self.size // t, w * self.size // t) for h, w in known["grid_pinpoints"])
        if "patch_size" in known:
            opts["patch_size"] = self.patch
        if "tokens_per_tile" in known:
            opts["tokens_per_tile"] = self.side * self.side  # the tower's grid, no pixel shuffle
        return opts

    def frames_for(self) -> int:
        """n = floor(B / P) frames under --frame-budget B (8 frames without one), capped."""
        n = 8 if self.frame_budget is None else self.frame_budget // self.rows
        return max(0, min(n, MAX_FRAMES))


ANYRES_PRESETS = ("llava-next", "internvl2.5")


def check_anyres(tower: Tower) -> None:
    """Refuse, with one line, a preset whose plan is not tiles of the tower's size."""
    if tower.anyres is None:
        return
    if tower.anyres not in ANYRES_PRESETS:
        raise UsageError(f"--anyres {tower.anyres}: encode tiles with {', '.join(ANYRES_PRESETS)} "
                         "(presets whose plan is square tiles the tower can encode)")
    if tower.cls:
        raise UsageError("--cls with --anyres: AnyRes layouts count patch tokens only (CLS dropped); leave out --cls")
    if tower.size % tower.patch:
        raise UsageError(f"tower size {tower.size} is not a multiple of its patch size {tower.patch}")


def _view(kind: str, start: int, tower: Tower, **extra) -> dict:
    return {"kind": kind, "rows": [start, start + tower.rows], "grid": [tower.side, tower.side], **extra}


def image_views(img, tower: Tower) -> tuple[list, dict]:
    """(PIL views, meta) of one decoded RGB image: `views` (kind, rows [start, end), patch grid,
    cell, box) and `layout` (what lm_layout needs)."""
    w, h = img.size
    if tower.anyres is None:
        return [img], {"views": [_view("image", 0, tower, box=[0, 0, w, h])], "layout": {"kind": "all"}}
    from vlmtool.budget import image_plan

    plan = image_plan(tower.anyres, w, h, **tower.plan_options())
    rows, cols = plan.grid
    if rows * cols + 1 > MAX_VIEWS:
        raise UsageError(f"{tower.anyres} plans {rows}x{cols} tiles for {w}x{h}: over the cap of {MAX_VIEWS} views")
    if any(p.name == "newlines" for p in plan.parts):
        return _next_views(img, plan, tower)
    return _tiled_views(img, plan, tower)


def unpadded(height: int, width: int, cur_h: int, cur_w: int) -> tuple[int, int, int, int]:
    """Feature rows/cols kept after removing the padding, and the offsets of the kept block: the
    same arithmetic as budget's (vlmtool/budget/presets.py _unpadded, from transformers
    models/llava_next/processing_llava_next.py _get_unpadded_features)."""
    off_h = off_w = 0
    if width / height > cur_w / cur_h:
        new_h = int(round(height * (cur_w / width), 7))
        off_h = (cur_h - new_h) // 2
        cur_h -= off_h * 2
    else:
        new_w = int(round(width * (cur_h / height), 7))
        off_w = (cur_w - new_w) // 2
        cur_w -= off_w * 2
    return cur_h, cur_w, off_h, off_w


def anyres_canvas(img, plan):
    """LLaVA-NeXT's canvas: the image scaled to fit plan.resized, aspect kept, centred on black
    (transformers image_processing_llava_next.py resize_and_pad; the same rounding as budget's
    tile boxes). Returns (canvas, (x, y, w, h) of the image on it)."""
    from PIL import Image

    w, h = img.size
    cw, ch = plan.resized
    scale = min(cw / w, ch / h)
    nw, nh = min(math.ceil(w * scale), cw), min(math.ceil(h * scale), ch)
    x, y = (cw - nw) // 2, (ch - nh) // 2
    canvas = Image.new("RGB", (cw, ch), (0, 0, 0))
    canvas.paste(img.resize((nw, nh), Image.BICUBIC), (x, y))
    return canvas, (x, y, nw, nh)


def _next_views(img, plan, tower: Tower) -> tuple[list, dict]:
    rows, cols = plan.grid
    s, g = tower.size, tower.side
    canvas, placed = anyres_canvas(img, plan)
    views, metas = [img], [_view("base", 0, tower, box=[0, 0, *img.size])]
    tiles = [p for p in plan.parts if p.name == "tile"]
    for part in tiles:
        r, c = part.grid
        views.append(canvas.crop((c * s, r * s, (c + 1) * s, (r + 1) * s)))
        metas.append(_view("tile", len(metas) * tower.rows, tower, cell=[r, c], canvas_box=[c * s, r * s, (c + 1) * s, (r + 1) * s],
                           box=list(part.box)))
    cur_h, cur_w, off_h, off_w = unpadded(img.size[1], img.size[0], g * rows, g * cols)
    layout = {"kind": "anyres", "tiles": [rows, cols], "feature_grid": [g * rows, g * cols], "crop": [off_h, off_w, cur_h, cur_w],
              "canvas": list(plan.resized), "placed": list(placed), "newlines": True}
    return views, {"views": metas, "layout": layout}


def _tiled_views(img, plan, tower: Tower) -> tuple[list, dict]:
    from PIL import Image

    rows, cols = plan.grid
    s = tower.size
    canvas = img.resize((cols * s, rows * s), Image.BICUBIC)
    views, metas = [], []
    for part in plan.parts:
        if part.name == "tile":
            r, c = part.grid
            views.append(canvas.crop((c * s, r * s, (c + 1) * s, (r + 1) * s)))
            metas.append(_view("tile", len(metas) * tower.rows, tower, cell=[r, c],
                               canvas_box=[c * s, r * s, (c + 1) * s, (r + 1) * s], box=list(part.box)))
        elif part.name == "thumbnail":
            views.append(img.resize((s, s), Image.BICUBIC))
            metas.append(_view("thumbnail", len(metas) * tower.rows, tower, box=list(part.box)))
    return views, {"views": metas, "layout": {"kind": "all", "tiles": [rows, cols], "canvas": [cols * s, rows * s]}}


def decode_frames(path: str, times: list[float], cap: int = MAX_FRAMES) -> list[tuple[float, object]]:
    """(time, PIL RGB image) of the first frame at or after each timestamp (the last frame when a
    timestamp is past the end), decoded with PyAV: seek back to the keyframe before it, decode on."""
    import av

    out = []
    with av.open(path) as c:
        s = c.streams.video[0]
        tb = float(s.time_base)
        for t in times[:cap]:
            c.seek(max(0, int(t / tb)), stream=s, backward=True, any_frame=False)
            last = None
            for frame in c.decode(s):
                last = frame
                if frame.time is not None and frame.time >= t - 1e-6:
                    break
            if last is None:
                raise ValueError(f"no frame decodes at or before {t:.3f}s")
            # threads=1: swscale's slice threads (its default, one per CPU) hung a DataLoader
            # worker forked from a threaded parent, waiting on threads the fork does not copy
            out.append((float(last.time or 0.0), last.to_image(threads=1).convert("RGB")))
    return out


def video_views(path: str, tower: Tower) -> tuple[list, dict]:
    """(frames as PIL views, meta) of one video file: budget's frame plan, decoded with PyAV."""
    from vlmtool.budget.video import probe, select_frames

    info = probe(path)
    n = tower.frames_for()
    times = select_frames(info, n, tower.select, tower.sample_fps, path)
    frames = decode_frames(path, times)
    if not frames:
        raise ValueError("no frames selected (the video has no duration or frames)")
    views = [im for _, im in frames]
    metas = [_view("frame", i * tower.rows, tower, time=round(t, 6), planned=times[i], box=[0, 0, *im.size])
             for i, (t, im) in enumerate(frames)]
    video = {**info.to_json(), "video": None, "select": tower.select, "frame_budget": tower.frame_budget, "planned_frames": n,
             "timestamps": times}
    return views, {"views": metas, "layout": {"kind": "all"}, "video": video}
