"""`--decode device` (core/device_decode.py), run on the CPU as CI runs it: the torch transform
against open_clip's PIL one, and filter and encode against their default paths (scores within
1e-3, the same kept set and the same rejects; features within 5e-3 relative)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from vlmtool.core.device_decode import Encoded, drop_rejected, encoded, model_input


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny CLIP saved to a file (the same weights in every run), and a faulty world."""
    from vlmtool.clip.model import load_clip
    from vlmtool.world import make_world

    root = tmp_path_factory.mktemp("devdec")
    torch.manual_seed(0)
    torch.save(load_clip("tiny-clip", "random").model.state_dict(), root / "tiny.pt")
    make_world(root / "world", samples=48, shard_size=16, seed=3, mismatch=0.3, broken=0.3, sizes="small")
    return root


def _jpegs(n: int, sizes: str):
    from vlmtool.world.shapes import _jpeg, render_scene

    return [_jpeg(render_scene(5, i, sizes)[0]) for i in range(n)]


@pytest.mark.parametrize("resize_mode", ["shortest", "squash", "longest"])
@pytest.mark.parametrize("size", [64, 224])
def test_pixels_within_one_level_of_open_clips_transform(resize_mode, size):
    import open_clip
    from PIL import Image

    from vlmtool.clip.model import Preprocess
    from vlmtool.core.samples import open_header

    pp = Preprocess(size, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD, "bicubic", resize_mode)
    ref_tf = open_clip.image_transform(size, False, pp.mean, pp.std, resize_mode=resize_mode)
    datas = _jpegs(12, "varied")
    x, bad = model_input([encoded(open_header(d, 0), d) for d in datas], pp, torch.device("cpu"))
    assert not bad and x.shape == (len(datas), 3, size, size)
    ref = torch.stack([ref_tf(Image.open(io.BytesIO(d)).convert("RGB")) for d in datas])
    std = torch.tensor(pp.std).view(1, 3, 1, 1)
    assert float(((x - ref).abs() * std).max()) <= 0.005  # in 0..1 units: at most one 8-bit level


def test_only_plain_jpegs_go_to_the_device():
    from PIL import Image

    from vlmtool.core.samples import open_header

    jpg = _jpegs(1, "small")[0]
    assert encoded(open_header(jpg, 0), jpg) is not None
    assert encoded(open_header(jpg[:-200], 0), jpg[:-200]) is None  # truncated: PIL's path rejects it
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, "PNG")
    assert encoded(open_header(buf.getvalue(), 0), buf.getvalue()) is None
    cmyk = io.BytesIO()
    Image.new("CMYK", (40, 30)).save(cmyk, "JPEG")
    assert encoded(open_header(cmyk.getvalue(), 0), cmyk.getvalue()) is None


def test_a_jpeg_the_decoders_refuse_leaves_the_batch_as_a_reject_in_its_place():
    from vlmtool.clip.model import Preprocess
    from vlmtool.core.batches import Batch
    from vlmtool.core.records import Reject
    from vlmtool.core.shards import ShardRef

    good = _jpegs(2, "small")
    junk = b"\xff\xd8\xff\xe0" + bytes(300) + b"\xff\xd9"
    items = [Encoded(torch.frombuffer(bytearray(d), dtype=torch.uint8), 64, 64) for d in (good[0], junk, good[1])]
    pp = Preprocess(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    x, bad = model_input(items, pp, torch.device("cpu"))
    assert x.shape == (2, 3, 32, 32) and list(bad) == [1] and bad[1].reason == "corrupt_image"
    ref = ShardRef(0, "s.tar", "s")
    batch = Batch(ref, ("a", "b", "c"), None, (Reject("s", "r", "missing_caption"),), (("ok", 0), ("reject", 0), ("ok", 1), ("ok", 2)))
    out = drop_rejected(batch, bad, "data")
    assert out.keys == ("a", "c") and out.data == "data"
    assert [out.keys[i] if k == "ok" else out.rejects[i].key for k, i in out.order] == ["a", "r", "b", "c"]
    assert out.rejects[1].reason == "corrupt_image"


def _filter(tiny, name, **kw):
    from vlmtool.filter import FilterOptions, run_filter

    opts = FilterOptions(pretrained=str(tiny / "tiny.pt"), model="tiny-clip", min_score=0.0, batch_size=8, device="cpu",
                         progress=False, **kw)
    return run_filter([str(tiny / "world")], str(tiny / name), opts)


def _rows(folder):
    return [json.loads(line) for line in (folder / "scores.jsonl").read_text().splitlines()]


def test_filter_device_decode_gives_the_default_scores_and_rejects(tiny):
    cpu = _filter(tiny, "cpu", workers=0)
    dev = _filter(tiny, "dev", workers=2, decode="device")
    assert dev["rejected"] == cpu["rejected"] and dev["ok"] == cpu["ok"] > 0
    a, b = _rows(tiny / "cpu"), _rows(tiny / "dev")
    assert [(r["key"], r["reason"]) for r in a] == [(r["key"], r["reason"]) for r in b]
    assert max(abs(x["score"] - y["score"]) for x, y in zip(a, b) if x["score"] is not None) <= 1e-3
    assert json.loads((tiny / "dev" / "report.json").read_text())["decode"] == "device"


def _features(folder):
    import tarfile

    out = {}
    for p in sorted((folder / "shards").iterdir()):
        with tarfile.open(p) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".npy"):
                    out[m.name] = np.load(io.BytesIO(tf.extractfile(m).read())).astype(np.float32)
    return out


def test_encode_device_decode_gives_the_default_features(tiny):
    from vlmtool.encode import EncodeOptions, run_encode

    runs = {}
    for decode in ("cpu", "device"):
        opts = EncodeOptions(pretrained=str(tiny / "tiny.pt"), model="tiny-clip", batch_size=8, workers=0, device="cpu",
                             progress=False, pooled=True, decode=decode)
        runs[decode] = run_encode([str(tiny / "world")], str(tiny / f"enc-{decode}"), opts)
    assert runs["device"]["rejected"] == runs["cpu"]["rejected"] and runs["device"]["ok"] == runs["cpu"]["ok"] > 0
    a, b = _features(tiny / "enc-cpu"), _features(tiny / "enc-device")
    assert a.keys() == b.keys()
    assert max(float(np.linalg.norm(a[k] - b[k]) / np.linalg.norm(a[k])) for k in a) <= 5e-3
    assert json.loads((tiny / "enc-device" / "features.json").read_text())["tower"]["decode"] == "device"


@pytest.mark.slow  # trains a CLIP for 150 steps (shared fixture)
def test_device_decode_keeps_the_demos_set_with_a_trained_clip(trained_clip, heldout_world, tmp_path):
    from conftest import run_cli

    model_dir, _ = trained_clip
    rows = {}
    for decode in ("cpu", "device"):
        run_cli("filter", heldout_world, "--out", tmp_path / decode, "--pretrained", model_dir, "--keep-fraction", "0.7",
                "--decode", decode, "--no-progress")
        rows[decode] = _rows(tmp_path / decode)
    a, b = rows["cpu"], rows["device"]
    assert max(abs(x["score"] - y["score"]) for x, y in zip(a, b) if x["score"] is not None) <= 1e-3
    assert [(r["key"], r["kept"], r["reason"]) for r in a] == [(r["key"], r["kept"], r["reason"]) for r in b]


def test_infer_rows_with_device_preprocessing_match_the_default(tiny):
    from PIL import Image

    from vlmtool.vlm.infer import visual_rows

    tower = {"arch": "tiny-clip", "pretrained": str(tiny / "tiny.pt"), "layer": -2, "cls": False}
    for data in _jpegs(3, "small"):
        im = Image.open(io.BytesIO(data)).convert("RGB")
        a, _ = visual_rows(tower, im, "cpu")
        b, _ = visual_rows(tower, im, "cpu", decode="device")
        assert float((a - b).norm() / a.norm()) <= 5e-3
