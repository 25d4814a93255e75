import json
import subprocess
import sys

import orjson
import pytest
from conftest import FIXTURES, run_cli

from vlmtool.budget import image_plan, image_tokens, preset_options, video_tokens
from vlmtool.budget.video import frame_budget, plan_video, probe, select_frames
from vlmtool.errors import UsageError


def test_quick_estimate_imports_no_torch_and_answers_json():
    code = (
        "import sys, atexit\n"
        "sys.argv = ['vlmtool', 'budget', '--size', '1920x1080', '--model', 'qwen2-vl,llava-next', '--json']\n"
        "atexit.register(lambda: sys.stderr.write('MODULES ' + ' '.join(sorted({m.split('.')[0] for m in sys.modules}))))\n"
        "from vlmtool.cli import main\nmain()\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)  # its speed: bench/budget.py
    assert p.returncode == 0, p.stderr
    mods = set(p.stderr.split("MODULES ", 1)[1].split())
    assert not mods & {"torch", "open_clip", "numpy", "av", "webdataset"}
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert [(r["model"], r["tokens"]) for r in rows] == [("qwen2-vl", image_tokens("qwen2-vl", 1920, 1080)),
                                                        ("llava-next", image_tokens("llava-next", 1920, 1080))]


def test_llava_15_is_576_and_options_are_keywords():
    assert image_tokens("llava-1.5", 336, 336) == 576
    assert image_tokens("llava-1.5", 1, 10000) == 576
    assert image_tokens("qwen2-vl", 1920, 1080, max_pixels=1003520) < image_tokens("qwen2-vl", 1920, 1080)
    assert image_tokens("internvl2.5", 1920, 1080, max_tiles=1) == 256
    assert image_tokens("gpt-4o", 4000, 3000, detail="low") == 85
    assert "max_pixels" in preset_options("qwen2-vl") and preset_options("qwen2-vl")["max_pixels"] == 12845056
    with pytest.raises(UsageError, match="no option"):
        image_tokens("llava-1.5", 10, 10, max_tiles=3)
    with pytest.raises(UsageError, match="unknown model preset"):
        image_tokens("llava-9", 10, 10)
    with pytest.raises(UsageError, match="positive"):
        image_tokens("qwen2-vl", 0, 10)


@pytest.mark.parametrize("preset", ["llava-next", "llava-onevision", "internvl2.5", "idefics3", "smolvlm", "gpt-4o", "gemini", "custom"])
@pytest.mark.parametrize("size", [(1920, 1080), (300, 900), (5000, 700), (336, 336)])
def test_anyres_plans_add_up_and_tiles_cover_the_image(preset, size):
    w, h = size
    opts = {"tile_size": 336, "max_tiles": 6} if preset == "custom" else {}
    plan = image_plan(preset, w, h, **opts)
    assert sum(p.tokens for p in plan.parts) == plan.tokens
    tiles = [p for p in plan.parts if p.name == "tile"]
    if plan.grid and tiles:
        assert len(tiles) == plan.grid[0] * plan.grid[1]
        assert sorted(p.grid for p in tiles) == [(r, c) for r in range(plan.grid[0]) for c in range(plan.grid[1])]
        for p in tiles:
            x0, y0, x1, y1 = p.box
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert min(p.box[0] for p in tiles) == 0 and max(p.box[2] for p in tiles) == w


def test_custom_rule_is_n_tiles_times_pt_plus_p0():
    plan = image_plan("custom", 1000, 500, image_size=224, patch_size=14, tile_size=224, max_tiles=20)
    n_tiles = plan.grid[0] * plan.grid[1]
    assert (n_tiles, plan.tokens) == (5 * 3, 15 * 256 + 256)
    assert image_tokens("custom", 1000, 500, image_size=224, patch_size=14, tile_size=224, max_tiles=4, thumbnail=False) <= 4 * 256


def test_frame_budget_is_floor_of_room_over_p():
    fb = frame_budget("llava-1.5", 32000, 640, 360, reserved=1000)
    assert fb["f_max"] == (32000 - 1000) // 576 and fb["tokens"] == fb["f_max"] * 576
    q = frame_budget("qwen2-vl", 16000, 1280, 720)
    # frame pairs share one grid (temporal patch 2): the budget buys an even number of frames
    assert q["f_max"] % 2 == 0
    assert video_tokens("qwen2-vl", q["f_max"], 1280, 720) <= 16000 < video_tokens("qwen2-vl", q["f_max"] + 1, 1280, 720)
    pooled = frame_budget("llava-1.5", 32000, 640, 360, temporal_pool=2)
    assert pooled["f_max"] == 2 * (32000 // 576)
    with pytest.raises(UsageError, match="smaller than one frame"):
        frame_budget("llava-1.5", 500, 640, 360)


def test_content_choice_spends_frames_where_the_picture_changes():
    video = FIXTURES / "shapes" / "videos" / "00000.mp4"
    truth = json.loads(video.with_suffix(".json").read_text())
    info = probe(video)
    assert (info.width, info.height, info.frames) == (truth["width"], truth["height"], truth["frames"])
    assert info.duration == pytest.approx(truth["seconds"], abs=0.1)

    def per_kind(ts):
        out = {"static": 0, "moving": 0}
        for t in ts:
            seg = next(s for s in truth["segments"] if s["start"] <= t < s["end"] or t >= truth["segments"][-1]["start"] and s is truth["segments"][-1])
            out[seg["kind"]] += 1
        return out

    content = per_kind(select_frames(info, 16, "content", path=video))
    uniform = per_kind(select_frames(info, 16, "uniform"))
    assert content["moving"] >= 3 * content["static"] and content["static"] >= 1
    assert abs(uniform["moving"] - uniform["static"]) <= 2
    plan = plan_video("qwen2-vl", info, budget=3000, strategy="content")
    assert plan["selected"] == len(plan["timestamps"]) <= plan["f_max"]
    assert plan["tokens"] == video_tokens("qwen2-vl", plan["selected"], info.width, info.height) <= 3000


def test_fps_cap_limits_frames():
    from vlmtool.budget.video import VideoInfo

    info = VideoInfo(None, 640, 360, 30.0, 300, 10.0)
    assert len(select_frames(info, 100, "fps", sample_fps=2)) == 20
    assert len(select_frames(info, 5, "fps", sample_fps=2)) == 5


def test_dataset_budget_over_shards_counts_every_image_and_reports_errors(tmp_path):
    p = run_cli("budget", FIXTURES / "shapes", "-m", "llava-1.5,qwen2-vl", "--json", "--no-progress",
                "--kv-layers", "32", "--kv-heads", "8", "--head-dim", "128", "--price-per-mtok", "2.5")
    s = json.loads(p.stdout)
    world = json.loads((FIXTURES / "shapes" / "world.json").read_text())
    broken = world["counts"]["broken"]
    # header-only: corrupt and truncated-after-the-header images differ; missing images have no member
    n_images = 32 - broken["missing_image"]
    assert s["items"] == n_images
    assert s["models"]["llava-1.5"]["errors"] == broken["corrupt_image"]
    llava = s["models"]["llava-1.5"]
    assert llava["images"] == n_images - broken["corrupt_image"] and llava["total"] == 576 * llava["images"]
    assert llava["kv_bytes"] == 2 * 32 * 8 * 128 * 2 * llava["total"]
    assert llava["price"] == pytest.approx(llava["total"] / 1e6 * 2.5)
    rows = [orjson.loads(x) for x in run_cli("budget", FIXTURES / "shapes", "-m", "qwen2-vl", "--rows", "--no-progress").stdout.splitlines()]
    ok = [r for r in rows if r["tokens"] is not None]
    assert sum(r["tokens"] for r in ok) == s["models"]["qwen2-vl"]["total"]
    assert all(r["tokens"] == image_tokens("qwen2-vl", r["width"], r["height"]) for r in ok)
    assert any(r.get("error") for r in rows)


def test_bad_input_gives_clear_messages(tmp_path):
    cases = [(["--size", "0x10"], "positive"), (["--size", "abc"], "WIDTHxHEIGHT"), (["--size", "10x10", "-m", "nope"], "unknown model"),
             (["--size", "640x360", "--duration", "10", "--fps", "30", "--context", "100"], "smaller than one frame"),
             (["--size", "10x10", "--set", "frobs=3"], "has an option")]
    for args, msg in cases:
        p = run_cli("budget", *args, check=False)
        assert p.returncode == 2 and msg in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
    bad_video = tmp_path / "v" / "x.mp4"
    bad_video.parent.mkdir()
    bad_video.write_bytes(b"not a video")
    p = run_cli("budget", bad_video, "--context", "10000", check=False)
    assert p.returncode == 1 and "cannot read video" in p.stderr and "Traceback" not in p.stderr  # an input failed: 1, like a broken shard
    bad_img = tmp_path / "i" / "x.jpg"
    bad_img.parent.mkdir()
    bad_img.write_bytes(b"nope")
    p = run_cli("budget", bad_img.parent, "--json", "--no-progress")  # a bad image in a folder: a counted reject, exit 0
    s = json.loads(p.stdout)
    assert s["errors"][0]["source"].endswith("x.jpg") and s["rejects"] == {"unreadable_image": 1}


def test_draw_writes_an_overlay(tmp_path):
    from PIL import Image

    out = tmp_path / "plan.png"
    run_cli("budget", "--size", "1000x400", "-m", "llava-next", "--draw", out)
    im = Image.open(out)
    assert im.size == (1000, 400)
    assert len(im.convert("RGB").getcolors(maxcolors=10**6)) > 3  # tiles were drawn on the canvas


def test_table_for_humans_lists_parts():
    out = run_cli("budget", "--size", "1000x400", "-m", "llava-next").stdout
    assert "tile" in out and "newlines" in out and "2040" in out


@pytest.mark.parametrize("preset", ["qwen3-vl", "glm4.1v"])
def test_frame_budgets_for_the_temporal_merge_presets(preset):
    # a whole temporal patch (2 frames) is the least these processors take; the plan never asks for 1
    fb = frame_budget(preset, 16000, 1280, 720)
    assert fb["min_frames"] == 2 and fb["f_max"] >= 2
    assert video_tokens(preset, fb["f_max"], 1280, 720) <= 16000 < video_tokens(preset, fb["f_max"] + 1, 1280, 720)
    with pytest.raises(UsageError, match="temporal_patch_size"):
        video_tokens(preset, 1, 1280, 720)
    video = FIXTURES / "shapes" / "videos" / "00000.mp4"
    plan = plan_video(preset, probe(video), budget=2000, strategy="content")
    assert 2 <= plan["selected"] == len(plan["timestamps"]) and plan["tokens"] <= 2000


def test_qwen3_vl_plan_reports_its_timestamp_text_apart():
    from vlmtool.budget.video import VideoInfo, frame_times

    info = VideoInfo(None, 1280, 720, 25.0, 250, 10.0)
    plan = plan_video("qwen3-vl", info, num_frames=8)
    # uniform picks 0.625, 1.875, ... s: frames 15, 46, ... (the frame shown then), times idx / 25
    assert frame_times(info, plan["timestamps"])[:2] == [15 / 25, 46 / 25]
    assert plan["timestamp_text"] == ["<1.2 seconds>", "<3.7 seconds>", "<6.2 seconds>", "<8.7 seconds>"]
    assert plan["timestamp_tokens"] == 4 * 6 and plan["marker_tokens"] == 2 + 2 * 4
    assert plan["wrapper_tokens"] == 34 and plan["tokens"] == video_tokens("qwen3-vl", 8, 1280, 720)  # the budget counts visual tokens
    glm = plan_video("glm4.1v", info, num_frames=8)
    assert glm["timestamp_text"] == ["0", "3", "5", "8"] and glm["timestamp_tokens"] is None and glm["timestamp_chars"] == 4
    assert "timestamp_text" not in plan_video("qwen2-vl", info, num_frames=8)
    out = run_cli("budget", "--size", "1280x720", "--duration", "10", "--fps", "25", "--context", "3000", "-m", "qwen3-vl").stdout
    assert "timestamps (" in out and "marker tokens" in out


def test_qwen2_pre_tokenizer_cuts_a_timestamp_as_counted():
    # Qwen2's own pre-tokenizer regex (transformers), run by the tokenizers library: "<", a piece a
    # digit, ".", " seconds", ">", each one token of the Qwen2 vocabulary
    tokenizers = pytest.importorskip("tokenizers")
    qwen2 = pytest.importorskip("transformers.models.qwen2.tokenization_qwen2")
    from vlmtool.budget.frontier import qwen_timestamp_tokens

    split = tokenizers.pre_tokenizers.Split(tokenizers.Regex(qwen2.PRETOKENIZE_REGEX), behavior="isolated")
    for text in ("<0.5 seconds>", "<12.0 seconds>", "<3600.4 seconds>"):
        pieces = [p for p, _ in split.pre_tokenize_str(text)]
        assert pieces[0] == "<" and pieces[-2:] == [" seconds", ">"] and all(len(p) == 1 for p in pieces[1:-2])
        assert len(pieces) == qwen_timestamp_tokens(text)


def test_a_header_claiming_endless_frames_is_planned_up_to_the_cap():
    from vlmtool.budget.video import VideoInfo

    info = VideoInfo(None, 640, 360, 30.0, 2**40, 2**40 / 30)  # what a lying header may say
    plan = plan_video("qwen3-vl", info, budget=10**9, max_frames=5000)
    assert plan["selected"] == len(plan["timestamps"]) == plan["f_max"] == 5000
    assert plan["tokens"] == video_tokens("qwen3-vl", 5000, 640, 360)
