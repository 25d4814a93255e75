"""`vlmtool encode`: features equal open_clip's own forward on the same pixels, token counts and
bytes equal budget's arithmetic, bad input is counted by reason, a killed job resumes to the
same bytes."""

import io
import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import orjson
import pytest
from conftest import run_cli, sha256_of

TOL = 5e-3  # max |diff| / max |ref| after float16 storage


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the tiny model gains nothing from two, and on shared cores two threads
    wait on each other (measured here: 16x slower under load)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _saved_tower(tmp_path_factory, arch: str):
    """A random `arch` saved as a clip-train folder, so the job and the reference load the same weights."""
    import torch

    from vlmtool.clip.model import load_clip
    from vlmtool.clip.train import save_model

    torch.manual_seed(0)
    loaded = load_clip(arch, "random")
    out = tmp_path_factory.mktemp(arch)
    save_model(out, loaded.model, loaded, 0, {"test": True})
    return out


@pytest.fixture(scope="module")
def tiny_tower(tmp_path_factory):
    """A random tiny-clip (a ViT)."""
    return _saved_tower(tmp_path_factory, "tiny-clip")


@pytest.fixture(scope="module")
def tiny_rn_tower(tmp_path_factory):
    """A random tiny-rn-clip (open_clip's ModifiedResNet tower, 64 px)."""
    return _saved_tower(tmp_path_factory, "tiny-rn-clip")


@pytest.fixture(scope="module")
def mixed_world(tmp_path_factory):
    """Small, large, wide and tall images and two videos."""
    from vlmtool.world import make_world

    out = tmp_path_factory.mktemp("mixed")
    make_world(out, samples=16, shard_size=8, seed=10, sizes="varied", videos=2)
    return out


def encode(inputs, out, tower, **kw):
    from vlmtool.encode import EncodeOptions, run_encode

    kw = {"workers": 0, "progress": False, "batch_size": 16, **kw}
    return run_encode([str(i) for i in inputs], str(out), EncodeOptions(pretrained=str(tower), **kw))


def members(tar):
    """key -> {ext: bytes} of a tar, in order."""
    from webdataset.tariterators import base_plus_ext

    out = {}
    with tarfile.open(tar) as tf:
        for m in tf:
            key, ext = base_plus_ext(m.name)
            out.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return out


def outputs(job):
    from vlmtool.features import load_npy

    got = {}
    for t in sorted((job / "shards").glob("*.tar")):
        for key, mem in members(t).items():
            got[key] = {"tokens": load_npy(mem["tokens.npy"]), "meta": orjson.loads(mem["json"]), "npy_bytes": len(mem["tokens.npy"]),
                        "pooled": load_npy(mem["pooled.npy"]) if "pooled.npy" in mem else None}
    return got


def source_media(meta):
    """The sample's image (PIL) or video path, from the source named in its meta."""
    from PIL import Image

    src = meta["source"]
    if not src["shard"].endswith(".tar"):
        return src["shard"]
    with tarfile.open(src["shard"]) as tf:
        data = tf.extractfile(src["member"]).read()
    return Image.open(io.BytesIO(data)).convert("RGB")


def reference_canvas(img, meta):
    """The tiles' canvas made here from the source, as the format describes it (not by encode's code)."""
    from PIL import Image

    lay = meta["layout"]
    if "canvas" not in lay:
        return None
    cw, ch = lay["canvas"]
    if lay["kind"] == "anyres":  # aspect kept, centred on black
        x, y, w, h = lay["placed"]
        canvas = Image.new("RGB", (cw, ch))
        canvas.paste(img.resize((w, h), Image.BICUBIC), (x, y))
        return canvas
    return img.resize((cw, ch), Image.BICUBIC)  # InternVL: stretched to the grid


def reference_view(img, canvas, view, size):
    from PIL import Image

    if view["kind"] in ("image", "base"):
        return img
    if view["kind"] == "thumbnail":
        return img.resize((size, size), Image.BICUBIC)
    return canvas.crop(tuple(view["canvas_box"]))


def decoded_frames(path):
    import av

    with av.open(path) as c:
        return [(float(f.time), f.to_image().convert("RGB")) for f in c.decode(c.streams.video[0])]


def reference_rows(loaded, pil, layer, cls):
    import torch

    with torch.inference_mode():
        if not hasattr(loaded.model.visual, "transformer"):  # a ResNet tower: the stage's feature map, row by row
            fmap = loaded.model.visual.forward_intermediates(loaded.transform(pil)[None], indices=[layer],
                                                             intermediates_only=True)["image_intermediates"][0][0]  # [D, H, W]
            return fmap.permute(1, 2, 0).reshape(-1, fmap.shape[0]).numpy()
        out = loaded.model.visual.forward_intermediates(loaded.transform(pil)[None], indices=[layer], intermediates_only=True,
                                                        output_fmt="NLC", output_extra_tokens=cls)
        tok = out["image_intermediates"][0][0]  # [L, D]
        if cls:
            tok = torch.cat([out["image_intermediates_prefix"][0][0], tok])  # [1 + L, D]
    return tok.numpy()


def check_against_reference(job, tower_dir, layer, cls):
    """Every view of every sample against open_clip run on the same crop or decoded frame."""
    from vlmtool.clip.model import load_clip

    loaded = load_clip(None, str(tower_dir))
    size = loaded.preprocess.size
    kinds = set()
    for key, s in outputs(job).items():
        media = source_media(s["meta"])
        frames = decoded_frames(media) if isinstance(media, str) else None
        canvas = None if frames else reference_canvas(media, s["meta"])
        for view in s["meta"]["views"]:
            if view["kind"] == "frame":  # the first frame at or after the planned time
                t, pil = next((t, im) for t, im in frames if t >= view["planned"] - 1e-6)
                assert abs(t - view["time"]) < 1e-4
            else:
                pil = reference_view(media, canvas, view, size)
            ref = reference_rows(loaded, pil, layer, cls)
            got = s["tokens"][view["rows"][0] : view["rows"][1]].astype(np.float32)
            assert got.shape == ref.shape
            err = np.abs(got - ref).max() / np.abs(ref).max()
            assert err < TOL, (key, view["kind"], err)
            kinds.add(view["kind"])
    return kinds


@pytest.mark.parametrize("layer,cls", [(-2, False), (-1, False), (-2, True), (-1, True)])
def test_single_views_and_video_frames_equal_open_clip(tiny_tower, mixed_world, tmp_path, layer, cls):
    job = tmp_path / "f"
    inputs = [mixed_world / "00000.tar", mixed_world / "videos" / "00000.mp4"]
    s = encode(inputs, job, tiny_tower, layer=layer, cls=cls, frame_budget=4 * (64 + cls))
    assert s["complete"] and s["rejected"] == {} and s["ok"] == 9
    assert check_against_reference(job, tiny_tower, layer, cls) == {"image", "frame"}


@pytest.mark.parametrize("layer,stride,width", [(-2, 16, 256), (-1, 32, 512), (-3, 8, 128)])
def test_a_resnet_tower_writes_its_stage_grid(tiny_rn_tower, mixed_world, tmp_path, layer, stride, width):
    """A ResNet stage's feature map is the token grid: its stride stands for the patch size, in the
    plan, the counts and features.json; rows equal open_clip's map read row by row; infer's
    encode_image gives the same rows; a class token is refused (a ResNet has none)."""
    import numpy as np
    from PIL import Image

    from vlmtool.errors import UsageError
    from vlmtool.features import read, read_features_json
    from vlmtool.vlm.infer import encode_image

    job = tmp_path / "f"
    s = encode([mixed_world / "00000.tar", mixed_world / "videos" / "00000.mp4"], job, tiny_rn_tower, layer=layer,
               frame_budget=4 * (64 // stride) ** 2)
    assert s["complete"] and s["rejected"] == {} and s["ok"] == 9
    tower = read_features_json(job)["tower"]
    assert (tower["patch_size"], tower["width"], tower["rows_per_view"]) == (stride, width, (64 // stride) ** 2)
    assert check_against_reference(job, tiny_rn_tower, layer, False) == {"image", "frame"}
    sample = next(x for x in read([str(job / "shards" / "00000.tar")]) if x["meta"]["kind"] == "image")
    member = sample["meta"]["source"]["member"]
    with tarfile.open(mixed_world / "00000.tar") as tf:
        img = Image.open(io.BytesIO(tf.extractfile(member).read()))
        img.load()
    rows = encode_image(tower, img).numpy()
    assert np.abs(rows - sample["tokens"].astype(np.float32)).max() / np.abs(rows).max() < TOL
    with pytest.raises(UsageError, match="no class token"):
        encode([mixed_world / "00000.tar"], tmp_path / "cls", tiny_rn_tower, layer=layer, cls=True)


@pytest.mark.parametrize("preset,layer", [("llava-next", -2), ("llava-next", -1), ("internvl2.5", -2)])
def test_anyres_tiles_equal_open_clip_on_the_same_crop(tiny_tower, mixed_world, tmp_path, preset, layer):
    job = tmp_path / "f"
    s = encode([mixed_world / "00001.tar"], job, tiny_tower, layer=layer, anyres=preset)
    assert s["complete"] and s["ok"] == 8
    kinds = check_against_reference(job, tiny_tower, layer, False)
    assert kinds == ({"base", "tile"} if preset == "llava-next" else {"tile", "thumbnail"})


@pytest.mark.parametrize("anyres,cls", [(None, False), (None, True), ("llava-next", False), ("internvl2.5", False)])
def test_token_counts_and_bytes_equal_budget_on_a_mixed_world(tiny_tower, mixed_world, tmp_path, anyres, cls):
    from vlmtool.budget import image_tokens, video_tokens
    from vlmtool.features import lm_layout, read_features_json

    job = tmp_path / "f"
    S, p, D = 64, 8, 128
    s = encode([mixed_world, mixed_world / "videos"], job, tiny_tower, anyres=anyres, cls=cls, frame_budget=500)
    assert s["ok"] == 18 and s["rejected"] == {}
    shapes, P = set(), (S // p) ** 2 + cls
    options = read_features_json(job)["anyres_options"]
    if anyres == "llava-next":  # LLaVA-NeXT's grids (1x2, 2x1, 2x2, 3x1, 1x3 tiles) at the tower's tile size
        assert options == {"tile_size": S, "patch_size": p, "grid_pinpoints": [[S, 2 * S], [2 * S, S], [2 * S, 2 * S], [3 * S, S], [S, 3 * S]]}
    elif anyres:
        assert options == {"tile_size": S, "tokens_per_tile": P}
    for key, o in outputs(job).items():
        meta, T = o["meta"], o["tokens"].shape[0]
        assert o["tokens"].shape == (T, D) and T == meta["tokens"] and o["npy_bytes"] == 128 + 2 * T * D
        rows, newline_after = lm_layout(meta)
        assert len(set(rows)) == len(rows) and all(0 <= r < T for r in rows) and set(newline_after) <= set(range(len(rows)))
        w, h = meta["width"], meta["height"]
        if meta["kind"] == "video":
            frames = len(meta["views"])
            assert frames == 500 // P and T == frames * P
            assert T == video_tokens("llava-1.5", frames, w, h, image_size=S, patch_size=p) + frames * cls
            want = T
        elif anyres is None:
            want = image_tokens("llava-1.5", w, h, image_size=S, patch_size=p) + cls
        else:
            want = image_tokens(anyres, w, h, **options)
        assert len(rows) + len(newline_after) == meta["lm_tokens"] == want, (key, w, h)
        shapes.add("wide" if w > 1.5 * h else "tall" if h > 1.5 * w else "large" if w * h > 300_000 else "small")
    assert shapes == {"wide", "tall", "large", "small"}
    assert s["predicted"]["tokens"] == s["tokens"] and s["predicted"]["samples"] == s["ok"]


def expected_outcomes(truth) -> dict:
    """faults.json's outcomes as encode gives them: a caption is optional, a record needs an
    image or a video, a bad video is corrupt_video."""
    from collections import Counter

    rename = {"missing_caption": "ok", "empty_caption": "ok", "missing_image": "missing_media"}
    out = Counter(rename.get(r["expect"], r["expect"]) for sh in truth["shards"].values() for r in sh["records"])
    for v in truth["videos"].values():
        out["ok" if v["expect"] == "ok" else "corrupt_video"] += 1
    return dict(out)


def test_bad_input_is_counted_by_reason_and_the_good_encoded(tiny_tower, tmp_path, monkeypatch):
    from vlmtool.world import make_faults

    truth = make_faults(tmp_path / "faults")
    monkeypatch.chdir(tmp_path)  # a shell name run as a command would leave its marker here
    job = tmp_path / "f"
    s = encode([tmp_path / "faults", tmp_path / "faults" / "videos"], job, tiny_tower, workers=1)
    want = expected_outcomes(truth)
    assert s["ok"] == want.pop("ok") and s["rejected"] == dict(sorted(want.items()))
    assert s["samples"] == s["ok"] + sum(want.values())
    assert not list(tmp_path.rglob(truth["pwned_marker"] + "*"))
    rows = [orjson.loads(x) for x in (job / "rejects.jsonl").read_bytes().splitlines()]
    assert len(rows) == sum(want.values()) and all("/tmp" not in r["detail"] for r in rows if r["reason"] == "corrupt_video")
    assert sum(len(members(t)) for t in (job / "shards").glob("*.tar")) == s["ok"]


def test_nonfinite_features_are_rejects(tiny_tower, mixed_world, tmp_path):
    import torch

    from vlmtool.clip.model import load_clip
    from vlmtool.clip.train import save_model

    loaded = load_clip(None, str(tiny_tower))
    with torch.no_grad():
        loaded.model.visual.conv1.weight[0, 0, 0, 0] = float("inf")
    bad = tmp_path / "bad-tower"
    save_model(bad, loaded.model, loaded, 0, {})
    s = encode([mixed_world / "00000.tar"], tmp_path / "f", bad)
    assert s["ok"] == 0 and s["rejected"] == {"nonfinite_features": 8}


def test_refusals_say_what_to_do(tiny_tower, mixed_world, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from vlmtool.errors import UsageError

    with pytest.raises(UsageError, match="--cls with --anyres"):
        encode([mixed_world / "00000.tar"], tmp_path / "a", tiny_tower, anyres="llava-next", cls=True)
    with pytest.raises(UsageError, match="--anyres qwen2-vl"):
        encode([mixed_world / "00000.tar"], tmp_path / "a", tiny_tower, anyres="qwen2-vl")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(UsageError, match="MB free"):
        encode([mixed_world / "00000.tar"], tmp_path / "b", tiny_tower)
    assert not (tmp_path / "b").exists()


def test_meta_names_source_text_and_tower(tiny_tower, mixed_world, tmp_path):
    from vlmtool.encode.job import file_sha256
    from vlmtool.features import feature_shards, read, read_features_json

    job = tmp_path / "f"
    encode([mixed_world / "00000.tar"], job, tiny_tower, pooled=True)
    fj = read_features_json(job)
    tw = fj["tower"]
    assert tw["weights_sha256"] == file_sha256(tiny_tower / "model.safetensors")
    assert (tw["architecture"], tw["layer"], tw["cls"], tw["width"], tw["image_size"], tw["patch_size"]) == ("tiny-clip", -2, False, 128, 64, 8)
    src = members(mixed_world / "00000.tar")
    for key, o in outputs(job).items():
        assert o["meta"]["text"]["caption"] == src[key]["txt"].decode().strip()
        assert o["meta"]["text"]["meta"] == orjson.loads(src[key]["json"])
        assert o["pooled"].shape == (64,) and abs(np.linalg.norm(o["pooled"].astype(np.float32)) - 1) < 1e-2
    got = list(read(feature_shards([str(job)])))  # the reader reads what encode wrote
    assert [g["key"] for g in got] == list(src) and all(g["pooled"] is not None and g["meta"]["text"] for g in got)


@pytest.mark.slow
def test_sigkill_mid_shard_then_rerun_gives_the_same_bytes(tiny_tower, mixed_world, tmp_path):
    """A killed job, rerun, ends with every sample encoded exactly once, byte for byte as a clean run."""
    from vlmtool.world import make_world

    world = make_world(tmp_path / "w", samples=48, shard_size=8, seed=7, sizes="small")["out"]
    args = ["--pretrained", str(tiny_tower), "--no-progress", "--workers", "1", "--batch-size", "4"]
    inputs = "\n".join(f"pipe:sleep 0.5; cat {world}/{p}" for p in sorted(os.listdir(world)) if p.endswith(".tar"))
    run_cli("encode", "-", "--out", tmp_path / "clean", *args, input=inputs)
    job = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "vlmtool", "encode", "-", "--out", str(job), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    proc.stdin.write(inputs.encode())
    proc.stdin.close()
    deadline = time.time() + 120

    def partial():  # an output shard open under its temporary name: the job is inside a shard
        return list((job / "shards").glob(".*.tmp")) if (job / "shards").exists() else []

    def mid_shard():
        return len(list((job / "_done").glob("*.json"))) >= 2 and partial()

    while time.time() < deadline:  # stop the job, look, and kill it only if it is frozen inside a shard
        if mid_shard():
            os.killpg(proc.pid, signal.SIGSTOP)
            time.sleep(0.2)  # a rename in flight completes before the job stops
            if mid_shard():
                break
            os.killpg(proc.pid, signal.SIGCONT)  # the shard closed between the look and the stop: go on
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 2 <= len(list((job / "_done").glob("*.json"))) < 6 and partial()
    run_cli("encode", "-", "--out", job, *args, input=inputs)
    clean = sorted((tmp_path / "clean" / "shards").glob("*.tar"))
    assert [t.name for t in clean] == sorted(t.name for t in (job / "shards").glob("*.tar")) and len(clean) == 6
    for t in clean:
        assert sha256_of(t) == sha256_of(job / "shards" / t.name)
    keys = [k for t in clean for k in members(job / "shards" / t.name)]
    assert len(keys) == len(set(keys)) == 48
    assert not list(job.rglob("*.tmp"))


def test_video_members_of_a_shard_and_samples_without_captions(tiny_tower, mixed_world, tmp_path):
    from vlmtool.core.shards import ShardTarWriter

    video = (mixed_world / "videos" / "00000.mp4").read_bytes()
    image = members(mixed_world / "00000.tar")
    first = next(iter(image))
    w = ShardTarWriter(tmp_path / "mixed.tar")
    w.write({"__key__": "clip", "mp4": video, "txt": b"a moving shape", "json": b'{"source": "test"}'})
    w.write({"__key__": "bare", "jpg": image[first]["jpg"]})  # no caption, no json
    w.commit()
    job = tmp_path / "f"
    s = encode([tmp_path / "mixed.tar"], job, tiny_tower, frame_budget=3 * 64, select="fps", sample_fps=0.5)
    assert s["ok"] == 2 and s["rejected"] == {}
    got = outputs(job)
    clip = got["clip"]["meta"]
    assert clip["kind"] == "video" and [v["kind"] for v in clip["views"]] == ["frame"] * 3
    assert clip["text"] == {"caption": "a moving shape", "meta": {"source": "test"}} and clip["video"]["select"] == "fps"
    times = [v["time"] for v in clip["views"]]
    assert times == sorted(times) and len(set(times)) == 3
    assert got["bare"]["meta"]["text"] == {"caption": None, "meta": {}} and got["bare"]["tokens"].shape == (64, 128)


@pytest.mark.slow
def test_cli_prints_the_plan_then_the_summary(tiny_tower, mixed_world, tmp_path):
    p = run_cli("encode", mixed_world / "00000.tar", "--pretrained", tiny_tower, "--out", tmp_path / "f", "--json", "--no-progress",
                "--workers", "1")
    s = orjson.loads(p.stdout)
    assert "will write 8 samples, 512 token rows of width 128" in p.stderr
    assert s["complete"] and s["ok"] == 8 and s["tokens"] == 512 and (tmp_path / "f" / "manifest.json").exists()
    p = run_cli("encode", mixed_world / "00000.tar", "--pretrained", tiny_tower, "--out", tmp_path / "f", "--layer", "-1", check=False)
    assert p.returncode == 2 and "other settings: layer" in p.stderr and "Traceback" not in p.stderr


def test_two_ranks_write_what_one_process_writes(tiny_tower, mixed_world, tmp_path, monkeypatch):
    """Shard i goes to rank i % 2; the union of the ranks' shards is byte for byte a one-process
    run's, and the rank that finishes last writes the manifest."""
    inputs = [mixed_world / "00000.tar", mixed_world / "00001.tar", mixed_world / "videos" / "00000.mp4"]
    encode(inputs, tmp_path / "one", tiny_tower, frame_budget=256)
    job = tmp_path / "two"
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        s = encode(inputs, job, tiny_tower, frame_budget=256)
        assert s["complete"] == (rank == 1)
    assert s["ok"] == 17 and (job / "manifest.json").exists()
    one = sorted(p.name for p in (tmp_path / "one" / "shards").glob("*.tar"))
    assert one == sorted(p.name for p in (job / "shards").glob("*.tar")) and len(one) == 3
    for name in one:
        assert sha256_of(job / "shards" / name) == sha256_of(tmp_path / "one" / "shards" / name)
    assert (job / "features.json").read_bytes() == (tmp_path / "one" / "features.json").read_bytes()
