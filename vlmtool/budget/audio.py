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


def _samples(seconds: float, sampling_rate: int) -> int:
    """Samples of a clip resampled to the feature extractor's rate."""
    return round(_check_seconds(seconds) * sampling_rate)


def _windows(seconds: float, window_seconds: int) -> list[float]:
    """A clip cut into consecutive windows of window_seconds (the last one shorter), as long-form
    transcription runs it; one window for a clip of 0 s."""
    seconds = _check_seconds(seconds)
    n = max(1, math.ceil(seconds / window_seconds))
    return [min(window_seconds, seconds - k * window_seconds) for k in range(n)]


def whisper(seconds: float, window_seconds: int = 30, tokens_per_window: int = 1500, chunked: bool = False) -> int:
    """Whisper: the feature extractor pads or cuts the clip to one 30 s window of 3000 log-mel frames
    (truncation at chunk_length), and the encoder's stride-2 convolution gives 1500 positions: 1500
    whatever the length. With chunked, long-form transcription's consecutive 30 s windows: 1500 each.
    Ref: transformers models/whisper/feature_extraction_whisper.py (chunk_length 30, hop_length 160,
    __call__ truncation), configuration_whisper.py (max_source_positions 1500)."""
    return tokens_per_window * (len(_windows(seconds, window_seconds)) if chunked else 1)


def _whisper_frames(seconds: float, sampling_rate: int, hop_length: int, max_seconds: int) -> int:
    """Unpadded log-mel frames of a clip, cut at max_seconds (the Whisper feature extractor's
    attention mask, read every hop_length samples)."""
    return min(-(-_samples(seconds, sampling_rate) // hop_length), max_seconds * sampling_rate // hop_length)


def _two_strides(frames: int) -> int:
    """Ref: transformers models/qwen2_5_omni/processing_qwen2_5_omni.py _get_feat_extract_output_lengths."""
    return ((frames - 1) // 2 + 1 - 2) // 2 + 1 if frames else 0


def _qwen_audio(seconds: float, sampling_rate: int, hop_length: int, max_seconds: int, chunked: bool) -> int:
    if not chunked:
        return _two_strides(_whisper_frames(seconds, sampling_rate, hop_length, max_seconds))
    return sum(_two_strides(_whisper_frames(w, sampling_rate, hop_length, max_seconds)) for w in _windows(seconds, max_seconds))


def qwen2_audio(seconds: float, sampling_rate: int = 16000, hop_length: int = 160, max_seconds: int = 30, chunked: bool = False) -> int:
    """Qwen2-Audio: Whisper log-mel frames of the clip, cut at 30 s (the processor pads to max_length
    and truncates), a stride-2 convolution and a stride-2 pooling: about 25 tokens a second, 750 at
    most. With chunked, a clip cut by the caller into 30 s pieces, each counted so. Ref: transformers
    models/qwen2_audio/processing_qwen2_audio.py (num_audio_tokens)."""
    return _qwen_audio(seconds, sampling_rate, hop_length, max_seconds, chunked)


def qwen25_omni(seconds: float, sampling_rate: int = 16000, hop_length: int = 160, max_seconds: int = 30, chunked: bool = False) -> int:
    """Qwen2.5-Omni audio: the Qwen2-Audio rule (Whisper frames cut at 30 s, two stride-2 steps;
    chunked: 30 s pieces). Ref: transformers models/qwen2_5_omni/processing_qwen2_5_omni.py
    _get_num_audio_tokens, _get_feat_extract_output_lengths."""
    return _qwen_audio(seconds, sampling_rate, hop_length, max_seconds, chunked)


def phi4_mm(seconds: float, sampling_rate: int = 16000, win_length: int = 400, hop_length: int = 160, audio_compression_rate: int = 8,
            audio_downsample_rate: int = 1) -> int:
    """Phi-4-multimodal audio: 25 ms windows every 10 ms, compressed 8x (ceil), then the qformer's
    downsample (1). Ref: transformers models/phi4_multimodal/feature_extraction_phi4_multimodal.py
    (feature_lengths, _compute_audio_embed_size)."""
    n = _samples(seconds, sampling_rate)
    if n < win_length:
        raise UsageError(f"phi4-mm: a clip under {win_length / sampling_rate:g} s has no audio frame")
    frames = (n - win_length) // hop_length + 1
    compressed = -(-frames // audio_compression_rate)  # ceil, as the reference's integer + (remainder > 0)
    return -(-compressed // audio_downsample_rate)


def gemma3n_audio(seconds: float, audio_seq_length: int = 188, chunked: bool = False) -> int:
    """Gemma 3n audio: 188 tokens a clip (the feature extractor cuts at 30 s); chunked: 188 for each
    30 s piece. Ref: transformers models/gemma3n/processing_gemma3n.py (audio_seq_length 188),
    feature_extraction_gemma3n.py (max_length 480000 samples)."""
    return audio_seq_length * (len(_windows(seconds, 30)) if chunked else 1)


def _preset(name: str, source: str, audio, video=None) -> object:
    from vlmtool.budget.presets import Preset

    return Preset(name, source, "class", audio=audio, video=video)


def qwen25_omni_video(num_frames: int, width: int, height: int, min_pixels: int = 128 * 28 * 28, max_pixels: int = 768 * 28 * 28,
                      patch_size: int = 14, merge_size: int = 2, temporal_patch_size: int = 2) -> int:
    """Qwen2.5-Omni video: the Qwen2-VL video rule at the processor's video sizes (128 to 768
    28x28 cells a frame); with use_audio_in_video its sound's tokens (qwen25_omni) are interleaved
    with these. Ref: transformers models/qwen2_5_omni/processing_qwen2_5_omni.py (videos_kwargs)."""
    from vlmtool.budget.presets import qwen_video_tokens

    return qwen_video_tokens(num_frames, width, height, min_pixels, max_pixels, patch_size, merge_size, temporal_patch_size)


_TX = "transformers models/"
PRESETS: list = [
    _preset("whisper", _TX + "whisper/feature_extraction_whisper.py", whisper),
    _preset("qwen2-audio", _TX + "qwen2_audio/processing_qwen2_audio.py", qwen2_audio),
    _preset("qwen2.5-omni", _TX + "qwen2_5_omni/processing_qwen2_5_omni.py", qwen25_omni, qwen25_omni_video),
    _preset("phi4-mm", _TX + "phi4_multimodal/feature_extraction_phi4_multimodal.py", phi4_mm),
    _preset("gemma3n", _TX + "gemma3n/processing_gemma3n.py", gemma3n_audio),
]


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
