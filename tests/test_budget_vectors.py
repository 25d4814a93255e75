"""Counts equal the reference implementations' (tests/budget_vectors/make_vectors.py)."""

import json
from pathlib import Path

import pytest

from vlmtool.budget import audio_tokens, get, image_plan, image_tokens, video_tokens
from vlmtool.errors import UsageError

VECTORS = json.loads((Path(__file__).parent / "budget_vectors" / "vectors.json").read_text())["vectors"]


def _cases():
    for key, rows in VECTORS.items():
        if key.endswith((":video", ":video_text")) or ":video:" in key or key == "audio":
            continue
        preset, _, opt = key.partition(":")
        options = {}
        if opt:
            k, v = opt.split("=")
            options[k] = {"true": True, "false": False}.get(v, int(v) if v.isdigit() else v)
        for row in rows:
            if "tokens" in row or "error" in row:
                yield pytest.param(preset, options, row, id=f"{key}-{row['size'][0]}x{row['size'][1]}")
            if preset == "qwen2-vl" and ("tokens" in row or "error" in row):  # Qwen2.5-VL: the same processor and defaults
                yield pytest.param("qwen2.5-vl", options, row, id=f"qwen2.5-{key}-{row['size'][0]}x{row['size'][1]}")


@pytest.mark.parametrize("preset, options, row", list(_cases()))
def test_image_tokens_match_reference(preset, options, row):
    w, h = row["size"]
    options = {**options, **row.get("options", {})}
    if "error" in row:
        with pytest.raises(UsageError):
            image_tokens(preset, w, h, **options)
        return
    plan = image_plan(preset, w, h, **options)
    assert plan.tokens == row["tokens"]
    assert sum(p.tokens for p in plan.parts) == plan.tokens  # the parts add up
    if "billed" in row:
        assert plan.billed == pytest.approx(row["billed"], abs=0.01)
    if "grid_thw" in row:
        assert list(plan.grid) == [row["grid_thw"][1] // 2, row["grid_thw"][2] // 2]
    if "rows_cols" in row and row["rows_cols"][0]:
        assert list(plan.grid) == row["rows_cols"]
    if "real_tokens" in row:  # the processor's own preprocess agreed with its count method
        assert plan.tokens == row["real_tokens"]
    if "patches" in row:  # LLaVA-NeXT: base image + grid tiles
        assert 1 + plan.grid[0] * plan.grid[1] == row["patches"]
    if "wrapper_tokens" in row:  # MiniCPM-V: the placeholder text's markers, id digits and newlines
        assert plan.wrapper_tokens == row["wrapper_tokens"]
    if "resized" in row:  # MiniCPM-V, Pixtral: the sliced canvas (or the resized image) of the processor's own run
        assert list(plan.resized) == row["resized"]


@pytest.mark.parametrize("row", VECTORS["qwen2-vl:video"], ids=lambda r: f"{r['frames']}f-{r['size'][0]}x{r['size'][1]}")
def test_qwen_video_tokens_match_reference(row):
    w, h = row["size"]
    assert video_tokens("qwen2-vl", row["frames"], w, h) == row["tokens"]


VIDEO = [(key.split(":")[0], row) for key in VECTORS if key.endswith(":video") and key != "qwen2-vl:video" for row in VECTORS[key]]


@pytest.mark.parametrize("preset, row", VIDEO, ids=lambda x: x if isinstance(x, str) else f"{x['frames']}f-{x['size'][0]}x{x['size'][1]}")
def test_frontier_video_tokens_match_reference(preset, row):
    w, h = row["size"]
    if "error" in row:
        with pytest.raises(UsageError):
            video_tokens(preset, row["frames"], w, h)
        return
    assert video_tokens(preset, row["frames"], w, h) == row["tokens"]


VIDEO_TEXT = [(key.split(":")[0], row) for key in VECTORS if key.endswith(":video_text") for row in VECTORS[key]]
_PADS = {"qwen3-vl": ("<|vision_start|>", "<|vision_end|>", "<|video_pad|>"), "glm4.1v": ("<|begin_of_video|>", "<|end_of_video|>", "<|image|>")}


@pytest.mark.parametrize("preset, row", VIDEO_TEXT, ids=lambda x: x if isinstance(x, str) else f"{len(x['frames_indices'])}f-{x['fps']}fps")
def test_video_text_matches_the_processors_prompt(preset, row):
    # the prompt the real Qwen3VLProcessor / Glm4vProcessor made for these frames and their metadata,
    # rebuilt from our rules: the visual tokens a group and the text around each group
    w, h = row["size"]
    times = [i / row["fps"] for i in row["frames_indices"]]
    n = len(times)
    text = get(preset).video_text(times)
    groups = len(text["timestamp_text"])
    per = video_tokens(preset, n, w, h) // groups
    start, end, pad = _PADS[preset]
    if preset == "qwen3-vl":
        body = "".join(f"{t}<|vision_start|>{pad}*{per}<|vision_end|>" for t in text["timestamp_text"])
        # the processors' own tokens, with a tokenizer that has Qwen2's pre-tokenizer and " seconds" as one token
        assert row["input_ids"] == groups * per + text["wrapper_tokens"]
    else:
        body = "".join(f"<|begin_of_image|>{pad}*{per}<|end_of_image|>{t}" for t in text["timestamp_text"])
        assert text["timestamp_tokens"] is None and text["timestamp_chars"] == sum(map(len, text["timestamp_text"]))
    assert start + body + end == row["text"]
    assert text["marker_tokens"] == 2 + 2 * groups


@pytest.mark.parametrize("row", VECTORS["qwen3-vl:video:cap_pixels_per_frame=true"], ids=lambda r: f"{r['frames']}f-{r['size'][0]}x{r['size'][1]}")
def test_qwen3_vl_per_frame_cap_matches_reference(row):
    # transformers' Qwen3VLVideoProcessor.get_num_of_video_patches with cap_pixels_per_frame=True
    w, h = row["size"]
    if "error" in row:
        with pytest.raises(UsageError):
            video_tokens("qwen3-vl", row["frames"], w, h, cap_pixels_per_frame=True)
        return
    assert video_tokens("qwen3-vl", row["frames"], w, h, cap_pixels_per_frame=True) == row["tokens"]


def test_idefics_helper_and_processor_agree_where_both_ran():
    for name in ("idefics3", "smolvlm", "smolvlm-256m"):
        for row in VECTORS[name]:
            if "rows_cols" in row and row["rows_cols"][0]:
                _, r, c = row["helper_patches"]
                assert [r, c] == row["rows_cols"], (name, row)


AUDIO = [(key, row) for key, rows in VECTORS["audio"].items() for row in rows]


@pytest.mark.parametrize("key, row", AUDIO, ids=lambda x: x if isinstance(x, str) else f"{x['seconds']}s")
def test_audio_tokens_match_reference(key, row):
    preset, _, opt = key.partition(":")
    options = {"chunked": True} if opt == "chunked=true" else {}  # gemma3n:audio names the modality
    assert audio_tokens(preset, row["seconds"], **options) == row["tokens"]


def test_gemini_audio_is_the_documented_rate():
    # ai.google.dev/gemini-api/docs/tokens: "one minute of audio is represented as 1,920 tokens"
    assert audio_tokens("gemini", 60) == 1920
