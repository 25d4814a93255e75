"""Hosted APIs (vlmtool/budget/hosted.py): the vendors' worked examples, and the frame budget that
counts the timestamp text a video's processor writes."""

import math
import random

import pytest

from vlmtool.budget import audio_tokens, image_plan, image_tokens
from vlmtool.budget.hosted import claude_fit
from vlmtool.budget.video import VideoInfo, plan_video

# The vendors' own worked examples (stored copies of their pages, read 2026-12-06).
WORKED = [
    # OpenAI images-vision "Calculating costs": gpt-4o 1024x1024 -> 765, 2048x4096 -> 1105, low -> 85;
    # gpt-4.1-mini 1024x1024 -> 1024 patches, 1800x2400 -> 1452 patches (x 1.62)
    ("gpt-4o", 1024, 1024, {}, 765, None), ("gpt-4o", 2048, 4096, {}, 1105, None), ("gpt-4o", 4096, 8192, {"detail": "low"}, 85, None),
    ("gpt-4.1-mini", 1024, 1024, {}, 1024, 1658.88), ("gpt-4.1-mini", 1800, 2400, {}, 1452, 2352.24),
    # Anthropic, the older page's table (docs.anthropic.com/en/docs/vision, "Calculate image costs")
    ("claude-3", 200, 200, {}, 54, None), ("claude-3", 1000, 1000, {}, 1334, None), ("claude-3", 1092, 1092, {}, 1590, None),
    # Anthropic, the current page: ceil(w/28) x ceil(h/28) (1000x1000: 36 x 36)
    ("claude", 1000, 1000, {}, 1296, None), ("claude-4.5", 1000, 1000, {}, 1296, None),
    # Google, ai.google.dev/gemini-api/docs/tokens: an image with both sides <= 384 px is 258 tokens
    ("gemini", 384, 384, {}, 258, None), ("gemini-2.5", 300, 100, {}, 258, None),
]


@pytest.mark.parametrize("model, w, h, options, tokens, billed", WORKED)
def test_vendor_worked_examples(model, w, h, options, tokens, billed):
    plan = image_plan(model, w, h, **options)
    assert plan.tokens == tokens
    if billed is not None:
        assert plan.billed == pytest.approx(billed)


# Third-party counts of the Claude API (count_tokens), not the vendor's page: the adk-vision crate's
# documentation (docs.rs adk-vision 3.0.0, cloud::ClaudePixels: 960x540 -> 700; 2356x1530 -> 4,675
# visual tokens on the 2,576 px generation).
@pytest.mark.parametrize("w, h, tokens", [(960, 540, 700), (2356, 1530, 4675)])
def test_claude_counts_measured_by_others(w, h, tokens):
    assert image_tokens("claude-4.7", w, h) == tokens


def test_claude_generations_differ_only_past_the_older_limit():
    assert image_tokens("claude-4.5", 1092, 1092) == image_tokens("claude-4.7", 1092, 1092) == 39 * 39
    assert image_plan("claude-4.5", 8000, 8000).resized == (1092, 1092)  # the older page's 1:1 size
    assert image_tokens("claude-4.7", 8000, 8000) <= 4784 < image_tokens("claude-4.7", 2576, 2576, max_tokens=10**6)


def test_claude_fit_is_the_largest_size_within_the_native_resolution():
    rng = random.Random(5)
    for _ in range(300):
        w, h = rng.randint(1, 8000), rng.randint(1, 8000)
        for edge, cap in ((2576, 4784), (1568, 1568)):
            fw, fh = claude_fit(w, h, edge, cap)
            assert max(fw, fh) <= edge and math.ceil(fw / 28) * math.ceil(fh / 28) <= cap
            assert fw <= w and fh <= h
            if (fw, fh) != (w, h):  # one pixel more on the long edge would not fit
                long = max(fw, fh) + 1
                short = max(1, round(long * min(w, h) / max(w, h)))
                assert long > min(max(w, h), edge) or math.ceil(long / 28) * math.ceil(short / 28) > cap


@pytest.mark.parametrize("model, multiplier", [("gpt-4.1-nano", 2.46), ("o4-mini", 1.72), ("gpt-5-mini", 1.2), ("gpt-5-nano", 1.5)])
def test_patch_models_bill_patches_times_their_multiplier(model, multiplier):
    plan = image_plan(model, 1800, 2400)
    assert plan.tokens == 1452 and plan.billed == pytest.approx(round(1452 * multiplier, 2))
    assert image_plan("gpt-5-mini", 1024, 1024, multiplier=1.62).billed == pytest.approx(1658.88)  # the guide's figure


@pytest.mark.parametrize("model, base, tile", [("gpt-4.1", 85, 170), ("gpt-4.5", 85, 170), ("o3", 75, 150), ("gpt-5", 70, 140)])
def test_tile_models_are_base_plus_tiles(model, base, tile):
    assert image_tokens(model, 1024, 1024) == base + 4 * tile
    assert image_tokens(model, 2048, 4096) == base + 6 * tile
    assert image_tokens(model, 1024, 1024, detail="low") == base


# ---------------------------------------------------------------------------------- frame budgets with text


@pytest.mark.parametrize("model", ["qwen3-vl", "glm4.1v"])
def test_a_plan_never_exceeds_its_context_counted_with_the_text(model):
    rng = random.Random(11)
    for _ in range(15):
        w, h = rng.choice([(1280, 720), (640, 360), (160, 90), (1920, 1080), (64, 48)])
        fps = rng.choice([1.0, 2.0, 23.976, 30.0])
        duration = rng.uniform(2, 1200)
        info = VideoInfo(None, w, h, fps, int(duration * fps), duration)
        context, reserved = rng.randint(3000, 200_000), rng.choice([0, 100, 1000])
        plan = plan_video(model, info, context, reserved)
        text = plan["wrapper_tokens"] if plan["wrapper_tokens"] is not None else plan["marker_tokens"] + plan["timestamp_chars"]
        assert plan["text_counted"] and plan["tokens"] + text <= context - reserved
        if plan["selected"] < info.frames:  # the budget, not the video, set the count: one frame more does not fit
            more = plan_video(model, info, None, 0, num_frames=plan["selected"] + 1)
            more_text = more["wrapper_tokens"] if more["wrapper_tokens"] is not None else more["marker_tokens"] + more["timestamp_chars"]
            assert more["tokens"] + more_text > context - reserved


def test_qwen3_vl_timestamp_text_is_counted_by_default_and_can_be_left_out():
    info = VideoInfo(None, 1280, 720, 2.0, 500, 250.0)
    counted, visual_only = plan_video("qwen3-vl", info, 1500), plan_video("qwen3-vl", info, 1500, count_text=False)
    assert counted["text_counted"] and not visual_only["text_counted"]
    assert counted["selected"] < visual_only["selected"]
    assert visual_only["tokens"] + visual_only["wrapper_tokens"] > 1500  # what counting visual tokens alone let through


# ---------------------------------------------------------------------------------- audio past 30 s


@pytest.mark.parametrize("model, cut, chunked", [("whisper", 1500, 1500 * 3), ("qwen2-audio", 750, 750 * 2 + 375),
                                                 ("qwen2.5-omni", 750, 750 * 2 + 375), ("gemma3n", 188, 188 * 3)])
def test_long_audio_is_cut_by_default_and_chunked_on_request(model, cut, chunked):
    assert audio_tokens(model, 75) == cut
    assert audio_tokens(model, 75, chunked=True) == chunked
