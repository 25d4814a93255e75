"""Video frame budgets: tokens per frame, f_max = the most frames that fit a context budget, and
which frames to take (uniform, capped at a sampling rate, or where the picture changes)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable
from pathlib import Path

from vlmtool.budget import get, video_tokens
from vlmtool.errors import UsageError

STRATEGIES = ("uniform", "fps", "content")


@dataclass
class VideoInfo:
    path: str | None
    width: int
    height: int
    fps: float
    frames: int
    duration: float

    def to_json(self) -> dict:
        return {"video": self.path, "width": self.width, "height": self.height, "fps": round(self.fps, 4), "frames": self.frames,
                "duration": round(self.duration, 4)}


def probe(path: str | Path) -> VideoInfo:
    """Size, frame rate, frame count and duration from the container (no decoding)."""
    import av

    from vlmtool.core.shards import open_input

    try:
        with open_input(str(path)) as f, av.open(f) as c:
            if not c.streams.video:
                raise UsageError(f"{path}: no video stream")
            s = c.streams.video[0]
            fps = float(s.average_rate or s.guessed_rate or 0) or 0.0
            if s.duration is not None and s.time_base is not None:
                duration = float(s.duration * s.time_base)
            elif c.duration is not None:
                duration = c.duration / 1_000_000
            else:
                duration = 0.0
            frames = int(s.frames or 0) or (round(duration * fps) if fps else 0)
            return VideoInfo(str(path), s.codec_context.width, s.codec_context.height, fps, frames, duration)
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - PyAV raises many kinds (InvalidDataError, OSError, ...): each is one line
        raise UsageError(f"{path}: cannot read video ({type(e).__name__}: {e})") from None


def min_frames(preset: str, width: int, height: int, **options) -> int:
    """The fewest frames the preset's video processor takes (Qwen3-VL and GLM-4.1V need a whole
    temporal patch: 2); UsageError with the rule's reason when none up to 64 is accepted."""
    error = None
    for n in range(1, 65):
        try:
            video_tokens(preset, n, width, height, **options)
            return n
        except UsageError as e:
            error = e
    raise error


def frame_budget(preset: str, budget: int, width: int, height: int, reserved: int = 0, max_frames: int | None = None,
                 text: Callable[[int], int] | None = None, **options) -> dict:
    """f_max = the largest frame count whose tokens fit budget - reserved, found exactly from
    video_tokens (for a linear rule that is floor((B - R) / P)). With `text` (frame count -> the
    tokens of the text the processor writes around those frames: timestamps, markers), the visual
    tokens and that text together fit."""
    room = budget - reserved
    first = min_frames(preset, width, height, **options)

    def total(n: int) -> int:
        return video_tokens(preset, n, width, height, **options) + (text(n) if text else 0)

    one = total(first)
    if room < one:
        least = "one frame" if first == 1 else f"the {first} frames {preset}'s video processor takes at least"
        raise UsageError(f"a budget of {budget} tokens ({reserved} reserved for text) is smaller than {least} "
                         f"({one} tokens for {preset} at {width}x{height}{', its timestamp text included' if text else ''})")
    lo, hi = first, 2 * first
    cap = max_frames if max_frames is not None else 10**7
    while hi <= cap and total(hi) <= room:
        lo, hi = hi, hi * 2
    hi = min(hi, cap + 1)
    while hi - lo > 1:  # the tokens grow with frames: the last count that fits
        mid = (lo + hi) // 2
        if total(mid) <= room:
            lo = mid
        else:
            hi = mid
    f_max = lo
    tokens = video_tokens(preset, f_max, width, height, **options)
    out = {"model": preset, "budget": budget, "reserved": reserved, "tokens_per_frame": round(tokens / f_max, 3),
           "first_frame_tokens": one, "min_frames": first, "f_max": f_max, "tokens": tokens}
    if text:
        out["text_tokens"] = text(f_max)
    return out


def change_curve(path: str | Path, size: int = 64, max_rate: float = 8.0, threshold: float = 12.0) -> tuple[list[float], list[float]]:
    """(timestamps, change) for the decoded frames, at most `max_rate` a second: the fraction of
    pixels of tiny grayscale copies that changed by more than `threshold` grey levels since the
    previous analysed frame. The threshold ignores compression noise, which is faint but spread
    over the whole picture, and keeps real motion, which is strong where it happens."""
    import av
    import numpy as np

    times, change = [], []
    prev = None
    last_t = -1e9
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for frame in c.decode(s):
            t = float(frame.time) if frame.time is not None else len(times) / max(float(s.average_rate or 1), 1e-9)
            if t - last_t < 1.0 / max_rate - 1e-9:
                continue
            last_t = t
            h = max(1, round(size * frame.height / max(frame.width, 1)))
            small = frame.reformat(width=size, height=h, format="gray", threads=1).to_ndarray().astype(np.float32)  # as decode_frames
            change.append(0.0 if prev is None else float((np.abs(small - prev) > threshold).mean()))
            times.append(t)
            prev = small
    if change:
        change[0] = change[1] if len(change) > 1 else 0.0
    return times, change


def select_frames(info: VideoInfo, n: int, strategy: str = "uniform", sample_fps: float | None = None, path: str | Path | None = None) -> list[float]:
    """Timestamps (seconds) of at most n frames.

    uniform: centres of n equal spans. fps: at most `sample_fps` frames a second, spread
    evenly. content: frames placed at equal steps of accumulated picture change, so a static
    stretch gets few frames and a changing one many (a small floor keeps every stretch seen).
    """
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown frame selection {strategy!r}: use one of {', '.join(STRATEGIES)}")
    d = info.duration
    if info.frames:
        n = min(n, info.frames)
    if strategy == "fps":
        if not sample_fps or sample_fps <= 0:
            raise UsageError("--select fps needs --sample-fps > 0")
        n = min(n, max(1, math.floor(d * sample_fps)))
    if n <= 0 or d <= 0:
        return []
    if strategy in ("uniform", "fps"):
        return [round((k + 0.5) * d / n, 4) for k in range(n)]
    if path is None:
        raise UsageError("--select content needs a video file to look at")
    times, change = change_curve(path)
    if not times:
        return []
    mean = sum(change) / len(change)
    floor = 0.25 * mean + 1e-6  # every stretch keeps some coverage; change gets the rest
    weights = [c + floor for c in change]
    total = sum(weights)
    cum, acc = [], 0.0
    for w in weights:
        acc += w
        cum.append(acc)
    picked: list[int] = []
    j = 0
    for k in range(min(n, len(times))):
        q = (k + 0.5) / min(n, len(times)) * total
        while j < len(cum) - 1 and cum[j] < q:
            j += 1
        picked.append(j)
    # distinct frames: move a repeat to the nearest unused neighbour
    used: set[int] = set()
    out = []
    for i in picked:
        step = 0
        while True:
            for cand in (i + step, i - step):
                if 0 <= cand < len(times) and cand not in used:
                    used.add(cand)
                    out.append(cand)
                    break
            else:
                step += 1
                continue
            break
    return [round(times[i], 4) for i in sorted(out)]


DEFAULT_MAX_FRAMES = 100_000  # the most frames a plan lists (a header may claim any count)


def plan_video(preset: str, info: VideoInfo, budget: int | None = None, reserved: int = 0, strategy: str = "uniform",
               sample_fps: float | None = None, num_frames: int | None = None, max_frames: int = DEFAULT_MAX_FRAMES,
               count_text: bool = True, **options) -> dict:
    """The whole frame plan for one video: P, f_max, the chosen timestamps and the totals. At most
    max_frames frames are planned, whatever the budget or the header allows. With a budget and
    count_text (the default), the text the processor writes around the frames (Qwen3-VL's and
    GLM-4.1V's timestamps and markers: video_text) is counted in it, so visual tokens + text never
    exceed budget - reserved."""
    pool = int(options.get("temporal_pool", 1) or 1)
    if budget is None and num_frames is None:
        num_frames = info.frames
    if budget is not None:
        text = _text_counter(preset, info, strategy, sample_fps, options) if count_text else None
        fb = frame_budget(preset, budget, info.width, info.height, reserved, max_frames=max_frames, text=text, **options)
        n = fb["f_max"]
    else:
        fb = {"model": preset, "budget": None, "reserved": reserved}
        n = int(num_frames or 0)
    if num_frames is not None:
        n = min(n, num_frames)
    n = min(n, max_frames)
    path = info.path if strategy == "content" else None
    ts = select_frames(info, n, strategy, sample_fps, path)
    if ts and len(ts) < min_frames(preset, info.width, info.height, **options):
        raise UsageError(f"{info.path or 'video'}: {len(ts)} frame(s) selected, fewer than {preset}'s video processor takes")
    tokens = video_tokens(preset, len(ts), info.width, info.height, **dict(options))
    out = {**info.to_json(), **fb, "strategy": strategy, "temporal_pool": pool, "selected": len(ts), "timestamps": ts, "tokens": tokens}
    out.update(video_text(preset, info, ts, **options))
    if budget is not None:
        counted = _counted_text(out) if count_text else 0
        out["text_counted"] = bool(count_text and "timestamp_text" in out)
        assert tokens + counted <= budget - reserved
    return out


def _counted_text(plan: dict) -> int:
    """The text tokens a budget counts: the exact count where the tokenizer is known (Qwen3-VL),
    else markers + one token a character, an upper bound (GLM-4.1V: a token holds at least one)."""
    if "timestamp_text" not in plan:
        return 0
    if plan.get("wrapper_tokens") is not None:
        return plan["wrapper_tokens"]
    return plan["marker_tokens"] + plan["timestamp_chars"]


def _text_counter(preset: str, info: VideoInfo, strategy: str, sample_fps: float | None, options: dict) -> Callable[[int], int] | None:
    """n -> the text tokens of the frames the plan would take for n (uniform and fps: those frames;
    content: n frames at the video's end, whose timestamps are the longest: an upper bound)."""
    if get(preset).video_text is None:
        return None

    def text(n: int) -> int:
        if strategy == "content":
            ts = [info.duration] * min(n, info.frames or n)
        else:
            ts = select_frames(info, n, strategy, sample_fps)
        return _counted_text(video_text(preset, info, ts, **options))

    return text


def frame_times(info: VideoInfo, timestamps: list[float]) -> list[float]:
    """The times a processor gives the selected frames: index / fps, the index being the frame
    shown at each timestamp (as the video metadata's frames_indices and fps give them)."""
    if not info.fps or info.fps <= 0:
        return list(timestamps)
    last = info.frames - 1 if info.frames else None
    return [(min(int(t * info.fps + 1e-9), last) if last is not None else int(t * info.fps + 1e-9)) / info.fps for t in timestamps]


def video_text(preset: str, info: VideoInfo, timestamps: list[float], **options) -> dict:
    """The text the preset's processor writes around the video's visual tokens (Qwen3-VL's
    "<t seconds>" and GLM-4.1V's whole seconds before or after each temporal group, and their
    markers), for the selected frames; {} for a preset without such text. Apart from `tokens`
    (the visual tokens); a budget counts it beside them (plan_video)."""
    rule = get(preset).video_text
    if rule is None or not timestamps:
        return {}
    pool = int(options.get("temporal_pool", 1) or 1)
    times = frame_times(info, timestamps)[::pool]
    keep = {k: options[k] for k in ("temporal_patch_size",) if k in options}
    return rule(times, **keep)
