import io
import itertools
import tarfile
from collections import Counter

import orjson
import pytest
from conftest import FIXTURES, sha256_of
from PIL import Image

from vlmtool.world import CATEGORIES, PARTNER, SCENES, make_sample, make_video, make_world


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


def _named(caption: str) -> set[str]:
    """The categories a caption names, as whole words ("semicircle" does not name a circle)."""
    import re

    return {c for c in CATEGORIES if re.search(rf"\b{c}\b", caption.lower())}


def test_mismatched_captions_keep_the_truth():
    metas = [orjson.loads(make_sample(1, i, mismatch=0.5, sizes="small")["json"]) for i in range(80)]
    mism = [m for m in metas if m["mismatched"]]
    assert 25 <= len(mism) <= 55
    for i, m in enumerate(metas):
        cap = make_sample(1, i, mismatch=0.5, sizes="small")["txt"].decode()
        truth_shapes = {o["shape"] for o in m["objects"]}
        named = _named(cap)
        assert (named != truth_shapes) == m["mismatched"]


def test_plain_captions_name_the_shapes_alone_and_change_nothing_else():
    """--plain: that fraction of captions names the shapes without colours (the same shapes, the
    same picture, the truth unchanged); the other samples are byte for byte the default world's."""
    from vlmtool.world import COLORS

    n, plain_n = 120, 0
    for i in range(n):
        base, half, full = (make_sample(3, i, mismatch=0.3, sizes="small", plain=p) for p in (0.0, 0.5, 1.0))
        assert half["jpg"] == base["jpg"] == full["jpg"]
        meta, meta_full = orjson.loads(base["json"]), orjson.loads(full["json"])
        assert meta_full["objects"] == meta["objects"] and meta_full["mismatched"] == meta["mismatched"] and meta_full["plain"]
        words = set(full["txt"].decode().lower().rstrip(".").replace(",", "").split())
        assert not words & set(COLORS)
        assert _named(full["txt"].decode()) == _named(base["txt"].decode())
        if half["txt"] == base["txt"]:
            assert half["json"] == base["json"]
        else:
            plain_n += 1
            assert half["txt"] == full["txt"]
    assert 0.35 * n <= plain_n <= 0.65 * n


def test_partners_co_occur_more_than_other_pairs():
    pairs = Counter()
    singles = Counter()
    n = 600
    for i in range(n):
        from vlmtool.world import render_scene

        _, objs, _, _ = render_scene(2, i, sizes="small", kind="shapes")
        shapes = {o.shape for o in objs}
        singles.update(shapes)
        pairs.update(frozenset(p) for p in itertools.combinations(sorted(shapes), 2))
    lift = {p: pairs[p] * n / (singles[min(p)] * singles[max(p)]) for p in pairs}
    partner_lift = [lift[frozenset((a, b))] for a, b in PARTNER.items() if frozenset((a, b)) in lift]
    other_lift = [v for p, v in lift.items() if PARTNER[min(p)] != max(p)]
    assert min(partner_lift) > max(other_lift)
    assert singles["circle"] > singles["hexagon"]  # popularity is structured too


def test_scene_objects_co_occur_more_than_strays_and_every_category_appears():
    """The scenes world: the objects of one scene type lift each other; pairs across scene types
    (strays) do not; all 16 categories turn up, 1 to 6 to an image; the scene type is recorded."""
    from vlmtool.world import render_scene

    pairs, singles, counts, n = Counter(), Counter(), Counter(), 800
    for i in range(n):
        _, objs, _, scene = render_scene(4, i, sizes="square")
        names = {o.shape for o in objs}
        assert names & set(SCENES[scene]), (scene, names)
        singles.update(names)
        counts[len(objs)] += 1
        pairs.update(frozenset(p) for p in itertools.combinations(sorted(names), 2))
    home = {o: s for s, objs in SCENES.items() for o in objs}
    lift = {p: pairs[p] * n / (singles[min(p)] * singles[max(p)]) for p in pairs}
    inside = [v for p, v in lift.items() if home[min(p)] == home[max(p)]]
    across = [v for p, v in lift.items() if home[min(p)] != home[max(p)]]
    assert min(inside) > max(across)
    assert set(singles) == set(CATEGORIES) and len(CATEGORIES) >= 16
    assert set(counts) == set(range(1, 7)), counts


@pytest.mark.parametrize("seed", [11, 12])
def test_popular_and_adversarial_negatives_are_different_questions(tmp_path, seed):
    """POPE on the default world: popular and adversarial negatives share under half their
    questions (the six-shape world's shared almost all), and eval reports the share."""
    from vlmtool.evals.data import read_images
    from vlmtool.evals.pope import build_probes, negatives_overlap

    make_world(tmp_path / "w", samples=150, shard_size=50, seed=seed, sizes="square")
    overlap = negatives_overlap(build_probes(read_images([str(tmp_path / "w")], "objects", 0, progress=False).images))
    assert overlap["popular~adversarial"] < 0.5, overlap
    make_world(tmp_path / "old", samples=150, shard_size=50, seed=seed, sizes="square", kind="shapes")
    old = negatives_overlap(build_probes(read_images([str(tmp_path / "old")], "objects", 0, progress=False).images))
    assert old["popular~adversarial"] > 0.7, old


def test_committed_fixture_is_a_small_world_with_truth():
    tars = sorted((FIXTURES / "shapes").glob("*.tar"))
    assert len(tars) >= 2
    total = sum(p.stat().st_size for p in (FIXTURES / "shapes").rglob("*") if p.is_file())
    assert total < 1_000_000
    metas = [orjson.loads(r["json"]) for t in tars for r in _records(t).values() if "json" in r]
    assert any(m["mismatched"] for m in metas) and any("broken" in m for m in metas)
    assert all("objects" in m for m in metas)


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def test_a_rerun_into_a_world_folder_leaves_exactly_the_new_world(tmp_path):
    from vlmtool.inspect_shards import InspectOptions, run_inspect

    out = tmp_path / "w"
    make_world(out, samples=30, shard_size=10, seed=1, videos=1, sizes="small")
    assert len(_files(out)) == 6
    make_world(out, samples=12, shard_size=10, seed=2, sizes="small")
    assert _files(out) == ["00000.tar", "00001.tar", "world.json"]  # old shards and the videos/ folder gone
    assert run_inspect([str(out)], None, InspectOptions(progress=False))["samples"] == 12
    # a world.json from before its `files` list: its shards and videos are known by number and name
    meta = orjson.loads((out / "world.json").read_bytes())
    del meta["files"]
    (out / "world.json").write_bytes(orjson.dumps(meta))
    make_world(out, samples=5, shard_size=10, seed=2, sizes="small")
    assert _files(out) == ["00000.tar", "world.json"]


def test_a_killed_world_is_replaced_by_the_rerun(tmp_path):
    out = tmp_path / "w"
    make_world(out, samples=20, shard_size=10, seed=1, sizes="small")
    (out / "world.json").unlink()  # as if killed while writing: shards, a temporary file, no world.json
    (out / ".00002.tar.x1y2.tmp").write_bytes(b"partial")
    (out / ".world-pending.json").write_bytes(orjson.dumps({"files": ["00000.tar", "00001.tar", "00002.tar", "world.json"]}))
    make_world(out, samples=10, shard_size=10, seed=1, sizes="small")
    assert _files(out) == ["00000.tar", "world.json"]


def test_a_folder_holding_other_files_is_refused_and_left_alone(tmp_path):
    import pytest
    from conftest import run_cli

    from vlmtool.errors import UsageError

    out = tmp_path / "w"
    make_world(out, samples=10, shard_size=10, seed=1, sizes="small")
    (out / "notes.txt").write_text("mine")
    before = {p: sha256_of(out / p) for p in _files(out)}
    with pytest.raises(UsageError, match="notes.txt"):
        make_world(out, samples=5, shard_size=5, seed=1, sizes="small")
    assert {p: sha256_of(out / p) for p in _files(out)} == before
    p = run_cli("world", out, "-n", "4", "--no-progress", check=False)
    assert p.returncode == 2 and "notes.txt" in p.stderr and "Traceback" not in p.stderr
    (out / "notes.txt").unlink()
    (out / "world.json").write_text("my own notes, not a world's")  # a world.json no world wrote is not ours either
    with pytest.raises(UsageError, match="00000.tar"):
        make_world(out, samples=5, shard_size=5, seed=1, sizes="small")
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        make_world(tmp_path / "f", samples=1)


def test_broken_tar_always_cuts_inside_a_member(tmp_path):
    """A cut at a member boundary (or in the end padding) leaves a whole, shorter tar: it must
    never happen. These sizes and seeds put 60% of the file on a header or past the last member."""
    from vlmtool.core.records import Reject, tar_records
    from vlmtool.core.shards import shard_refs

    for n, seed in ((1, 0), (2, 3), (3, 1), (4, 1), (6, 3)):
        out = tmp_path / f"w{n}-{seed}"
        truth = make_world(out, samples=n, shard_size=n, seed=seed, broken_tar=True, sizes="small")["truncated_shard"]
        recs = list(tar_records(shard_refs([str(out / truth["shard"])])[0]))
        assert isinstance(recs[-1], Reject) and recs[-1].reason == "broken_tar", (n, seed)
        assert recs[-1].key == truth["key"] and len(recs) == n - truth["lost"]
        assert not any(isinstance(r, Reject) for r in recs[:-1])


def test_broken_world_counts_are_exactly_what_inspect_finds(tmp_path):
    from vlmtool.inspect_shards import InspectOptions, run_inspect

    s = make_world(tmp_path / "w", samples=30, shard_size=10, seed=1, broken=0.3, broken_tar=True, sizes="small")
    want = {k: v for k, v in s["counts"]["broken"].items() if v}
    want["broken_tar"] = 1
    got = run_inspect([str(tmp_path / "w")], None, InspectOptions(progress=False))
    assert got["samples"] == 30 - s["truncated_shard"]["lost"]
    assert got["rejected"] == dict(sorted(want.items()))


def _decodes(sample) -> bool:
    from vlmtool.core.samples import SampleError

    try:
        sample.load_image(draft=(1, 1))
    except SampleError:
        return False
    return True


def test_world_json_object_tables_are_counted_from_the_data(tmp_path):
    """What synth reads instead of world.py's tables: vocabulary, popularity and co-occurrence of
    the objects named in the samples a reader gets, as a dataset would describe itself."""
    from vlmtool.core.records import Reject, iter_samples
    from vlmtool.core.samples import object_labels
    from vlmtool.core.shards import shard_refs

    out = tmp_path / "w"
    tables = make_world(out, samples=80, shard_size=20, seed=4, broken=0.2, mismatch=0.3, broken_tar=True, sizes="small")["objects"]
    assert tables == orjson.loads((out / "world.json").read_bytes())["objects"]
    pop, pairs, n = Counter(), Counter(), 0
    for ref in shard_refs([str(p) for p in sorted(out.glob("*.tar"))]):
        for s in iter_samples(ref):
            if not isinstance(s, Reject) and _decodes(s):
                n += 1
                labels = sorted(set(object_labels(s.meta)))
                pop.update(labels)
                pairs.update(itertools.combinations(labels, 2))
    assert tables["samples"] == n and tables["popularity"] == dict(pop) and tables["vocabulary"] == sorted(pop)
    for (a, b), k in pairs.items():
        assert tables["cooccurrence"][a][b] == tables["cooccurrence"][b][a] == k
    assert sum(len(v) for v in tables["cooccurrence"].values()) == 2 * len(pairs)
    assert tables["field"] == "objects" and tables["label"] == "shape"
