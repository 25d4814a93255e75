"""What a job will write, from budget's arithmetic over the image headers and the video
containers (no pixel decoded), and the free-disk check before anything is written."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from vlmtool.encode.records import VIDEO_EXTS, is_media_file
from vlmtool.encode.views import Tower
from vlmtool.errors import UsageError

NPY_HEADER = 128  # numpy's .npy v1 header for a 2-D float16 array, padded to 64 bytes
TAR_OVERHEAD = 512 * 3 + 3 * 511  # per sample: three member headers, padding up to a block each
JSON_BYTES = 2048  # a sample's json, about (it names the views, the layout and the text)


def image_tokens(tower: Tower, width: int, height: int) -> tuple[int, int]:
    """(rows stored, tokens the language model sees) for one image, by budget's rules: llava-1.5's
    at the tower's size and patch (+1 with --cls), or the --anyres preset's plan."""
    from vlmtool.budget import image_plan

    if tower.anyres is None:
        lm = image_plan("llava-1.5", width, height, image_size=tower.size, patch_size=tower.patch).tokens + int(tower.cls)
        return tower.rows, lm
    plan = image_plan(tower.anyres, width, height, **tower.plan_options())
    views = sum(p.name in ("base", "tile", "thumbnail") for p in plan.parts)
    return views * tower.rows, plan.tokens


def video_tokens(tower: Tower, frames: int, width: int, height: int) -> int:
    """Rows of `frames` frames: budget's video rule for the tower's size and patch (+1 a frame with --cls)."""
    from vlmtool.budget import video_tokens as budget_video_tokens

    return budget_video_tokens("llava-1.5", frames, width, height, image_size=tower.size, patch_size=tower.patch) + frames * int(tower.cls)


def sample_bytes(rows: int, dim: int, embed_dim: int) -> int:
    """Bytes one sample adds to its shard, about: tokens exactly, json and tar headers estimated."""
    return NPY_HEADER + 2 * rows * dim + JSON_BYTES + TAR_OVERHEAD + ((NPY_HEADER + 2 * embed_dim + 1023) if embed_dim else 0)


def _video_frames(path: str, tower: Tower) -> tuple[int, int, int] | None:
    from vlmtool.budget.video import probe, select_frames

    try:
        info = probe(path)
    except UsageError:
        return None
    n = tower.frames_for()
    if tower.select != "content":  # content selection decodes the video: counted at most n
        n = len(select_frames(info, n, tower.select, tower.sample_fps))
    elif info.frames:
        n = min(n, info.frames)
    return (n if info.duration > 0 else 0), info.width, info.height


def predict(urls: list[str], tower: Tower, dim: int, pooled: bool, embed_dim: int) -> dict:
    """Samples, rows, bytes the job will write for the inputs that can be counted cheaply (local
    tars' images, image and video files); `uncounted` names what cannot be (streams, videos
    inside shards: counted as they are encoded)."""
    from vlmtool.budget.dataset import iter_items

    samples = tokens = size = 0
    uncounted = 0
    e = embed_dim if pooled else 0
    for url in urls:
        if not os.path.isfile(url):
            uncounted += 1
            continue
        if is_media_file(url) and url.lower().rsplit(".", 1)[-1] in VIDEO_EXTS:
            got = _video_frames(url, tower)
            if got and got[0]:
                rows = video_tokens(tower, *got)
                samples, tokens, size = samples + 1, tokens + rows, size + sample_bytes(rows, dim, e)
            continue
        for item in iter_items([url]):
            if item.error is None:
                rows, _ = image_tokens(tower, item.width, item.height)
                samples, tokens, size = samples + 1, tokens + rows, size + sample_bytes(rows, dim, e)
    line = f"will write {samples} samples, {tokens} token rows of width {dim} (float16), about {size / 1e6:.1f} MB"
    if uncounted:
        line += f" (+ {uncounted} inputs not counted: streams)"
    return {"samples": samples, "tokens": tokens, "bytes": size, "uncounted": uncounted, "line": line}


def check_disk(out: str | os.PathLike, need: int) -> None:
    """Refuse, in one line, a target folder whose disk lacks the bytes the job will write."""
    p = Path(out).resolve()
    while not p.exists():
        p = p.parent
    free = shutil.disk_usage(p).free
    if need > free:
        raise UsageError(f"--out {out}: the job writes about {math.ceil(need / 1e6)} MB and {p} has {free // 1_000_000} MB free: "
                         "free some space or choose another --out")
