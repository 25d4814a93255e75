"""Audio tokens per model family, from the clip's duration (read from the container header,
never by decoding).

This module imports neither torch nor numpy; PyAV is imported only to read a file's header.
"""

from __future__ import annotations

import math

from vlmtool.errors import UsageError


def _check_seconds(seconds) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        raise UsageError(f"audio duration must be a finite number of seconds >= 0, got {seconds!r}")
    return float(seconds)


def gemini_audio(seconds: float, tokens_per_second: int = 32) -> int:
    """Gemini: 32 tokens a second of audio ("one minute of audio is 1,920 tokens").
    Ref: ai.google.dev/gemini-api/docs/tokens (multimodal tokens)."""
    return math.ceil(_check_seconds(seconds) * tokens_per_second)


PRESETS: list = []


def probe_audio(path: str) -> float:
    """Seconds of a file's first audio stream, from the container header (PyAV; nothing is decoded).
    Raises UsageError when the file has no audio stream or no duration in its header."""
    import av

    from vlmtool.core.shards import open_input

    try:
        with open_input(path) as f, av.open(f) as c:
            if not c.streams.audio:
                raise UsageError(f"{path}: no audio stream")
            s = c.streams.audio[0]
            if s.duration is not None and s.time_base is not None:
                return float(s.duration * s.time_base)
            if c.duration is not None:
                return c.duration / 1_000_000
            raise UsageError(f"{path}: the container header gives no duration")
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - PyAV raises many kinds (InvalidDataError, OSError, ...): each is one line
        raise UsageError(f"{path}: cannot read audio ({type(e).__name__}: {e})") from None
