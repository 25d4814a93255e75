import io
import itertools
import tarfile
from collections import Counter

import orjson
from PIL import Image

from conftest import FIXTURES, sha256_of
from vlmtool.world import PARTNER, SHAPES, make_sample, make_video, make_world


def _records(path):
    recs = {}
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            key, ext = m.name.split(".", 1)
            recs.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return recs


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = make_world(tmp_path / "a", samples=20, shard_size=8, seed=5, mismatch=0.3, broken=0.2, sizes="small")
    b = make_world(tmp_path / "b", samples=20, shard_size=8, seed=5, mismatch=0.3, broken=0.2, sizes="small")
    make_world(tmp_path / "c", samples=20, shard_size=8, seed=6, mismatch=0.3, broken=0.2, sizes="small")
    assert a["shards"] == b["shards"] == 3
    for name in ("00000.tar", "00001.tar", "00002.tar"):
        assert sha256_of(tmp_path / "a" / name) == sha256_of(tmp_path / "b" / name)
        assert sha256_of(tmp_path / "a" / name) != sha256_of(tmp_path / "c" / name)


def test_video_is_deterministic_and_has_both_kinds_of_segment(tmp_path):
    t1 = make_video(tmp_path / "a.mp4", seed=1, index=0)
    t2 = make_video(tmp_path / "b.mp4", seed=1, index=0)
    assert sha256_of(tmp_path / "a.mp4") == sha256_of(tmp_path / "b.mp4")
    assert t1 == t2
    assert {s["kind"] for s in t1["segments"]} == {"static", "moving"}
    import av

    with av.open(str(tmp_path / "a.mp4")) as c:
        frames = [f.to_ndarray(format="gray").astype(int) for f in c.decode(video=0)]
    assert len(frames) == t1["frames"]
    fps = t1["fps"]
    diffs = [abs(frames[i + 1] - frames[i]).mean() for i in range(len(frames) - 1)]
    for seg in t1["segments"]:
        inner = diffs[int(seg["start"] * fps) + 1 : int(seg["end"] * fps) - 1]
        inner.sort()
        if seg["kind"] == "static":
            assert inner[len(inner) // 2] < 0.1
        else:
            assert inner[len(inner) // 2] > 0.5


def test_truth_matches_picture_and_caption():
    rec = make_sample(0, 1, sizes="varied")
    meta = orjson.loads(rec["json"])
    img = Image.open(io.BytesIO(rec["jpg"])).convert("RGB")
    assert img.size == (meta["width"], meta["height"])
    caption = rec["txt"].decode()
    for obj in meta["objects"]:
        assert f'{obj["color"]} {obj["shape"]}' in caption
        x0, y0, x1, y1 = obj["bbox"]
        # the centre pixel of a drawn shape differs from the background corner
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        bg = img.getpixel((0, 0)) if not any(o["bbox"][0] == 0 and o["bbox"][1] == 0 for o in meta["objects"]) else None
        if bg is not None:
            assert sum(abs(a - b) for a, b in zip(img.getpixel((cx, cy)), bg)) > 30


def test_mismatched_captions_keep_the_truth():
    metas = [orjson.loads(make_sample(1, i, mismatch=0.5, sizes="small")["json"]) for i in range(80)]
    mism = [m for m in metas if m["mismatched"]]
    assert 25 <= len(mism) <= 55
    for i, m in enumerate(metas):
        cap = make_sample(1, i, mismatch=0.5, sizes="small")["txt"].decode()
        truth_shapes = {o["shape"] for o in m["objects"]}
        named = {s for s in SHAPES if s in cap}
        assert (named != truth_shapes) == m["mismatched"]


def test_partners_co_occur_more_than_other_pairs():
    pairs = Counter()
    singles = Counter()
    n = 600
    for i in range(n):
        from vlmtool.world import render_scene

        _, objs, _ = render_scene(2, i, sizes="small")
        shapes = {o.shape for o in objs}
        singles.update(shapes)
        pairs.update(frozenset(p) for p in itertools.combinations(sorted(shapes), 2))
    lift = {p: pairs[p] * n / (singles[min(p)] * singles[max(p)]) for p in pairs}
    partner_lift = [lift[frozenset((a, b))] for a, b in PARTNER.items() if frozenset((a, b)) in lift]
    other_lift = [v for p, v in lift.items() if PARTNER[min(p)] != max(p)]
    assert min(partner_lift) > max(other_lift)
    assert singles["circle"] > singles["hexagon"]  # popularity is structured too


def test_committed_fixture_is_a_small_world_with_truth():
    tars = sorted((FIXTURES / "shapes").glob("*.tar"))
    assert len(tars) >= 2
    total = sum(p.stat().st_size for p in (FIXTURES / "shapes").rglob("*") if p.is_file())
    assert total < 1_000_000
    metas = [orjson.loads(r["json"]) for t in tars for r in _records(t).values() if "json" in r]
    assert any(m["mismatched"] for m in metas) and any("broken" in m for m in metas)
    assert all("objects" in m for m in metas)
