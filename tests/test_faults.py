"""The hostile corpus (`vlmtool world OUT --faults`): every fault class a reader must survive,
and the core giving exactly the outcome faults.json says, with and without loader workers."""

import os
import tarfile
from collections import Counter
from pathlib import Path

import orjson
import pytest
from conftest import ROOT, run_cli, sha256_of

from vlmtool.core.records import Reject, tar_records
from vlmtool.core.samples import REASONS
from vlmtool.core.shards import expand_inputs, shard_refs
from vlmtool.inspect_shards import InspectOptions, run_inspect
from vlmtool.world import make_faults, make_world
from vlmtool.world.faults import PWNED, SHELL_NAMES, Samples, caption_shard, write_tar


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "corpus"
    make_faults(out, seed=0)
    return out, orjson.loads((out / "faults.json").read_bytes())


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_of(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _pwned(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob(f"*{PWNED}*") if p.name.startswith(PWNED)]


@pytest.mark.parametrize("workers", [0, 2])
def test_inspect_gives_exactly_the_outcome_faults_json_says(corpus, workers, tmp_path, monkeypatch):
    out, truth = corpus
    monkeypatch.chdir(tmp_path)  # where a shell run by a shard's name would write
    s = run_inspect([str(out)], str(tmp_path / "job"), InspectOptions(workers=workers, progress=False))
    assert s["complete"]
    assert (s["samples"], s["ok"], s["rejected"]) == (truth["totals"]["samples"], truth["totals"]["ok"], truth["totals"]["rejected"])
    assert s["samples"] == s["ok"] + sum(s["rejected"].values())  # nothing lost
    file_of = {ref.name: Path(ref.url).name for ref in shard_refs(expand_inputs([str(out)]))}
    assert sorted(file_of.values()) == sorted(truth["shards"])
    for done in (tmp_path / "job" / "_done").glob("*.json"):
        got, want = orjson.loads(done.read_bytes()), truth["shards"][file_of[done.stem]]
        assert (got["samples"], got["ok"], got["rejected"]) == (want["samples"], want["ok"], want["rejected"]), file_of[done.stem]
        # every reject names the record the truth names, in tar order
        assert [(r["key"], r["reason"]) for r in got["rejects"]] == [(r["key"], r["expect"]) for r in want["records"] if r["expect"] != "ok"]
    assert _pwned(tmp_path, out.parent, ROOT) == []
    # members named with .. or an absolute path are data: nothing was written where they point
    assert not any(p.exists() for p in (Path("/tmp/vlmtool_absolute.jpg"), Path("/abs"), tmp_path.parent / "escape.jpg"))


def test_header_only_reader_sees_the_records_it_should(corpus):
    """iter_samples-level truth: records found by decoding pass a reader that only parses headers."""
    from vlmtool.core.records import iter_samples

    out, truth = corpus
    for ref in shard_refs(expand_inputs([str(out)])):
        want = [r for r in truth["shards"][Path(ref.url).name]["records"]]
        got = list(iter_samples(ref))
        assert len(got) == len(want), ref.url
        for g, w in zip(got, want):
            expect = "ok" if w["found_by"] == "decode" else w["expect"]
            assert (g.reason if isinstance(g, Reject) else "ok") == expect and g.key == w["key"], (ref.url, w)


def test_every_fault_class_is_there_and_varied(corpus):
    out, truth = corpus
    rejected = truth["totals"]["rejected"]
    assert set(rejected) == set(REASONS) - {"filtered"}
    assert all(n >= 2 for n in rejected.values()), rejected
    keys = {r["key"] for sh in truth["shards"].values() for r in sh["records"]}
    for unusual in ("cmyk_jpeg", "png_16bit_gray", "palette_png_transparent", "grayscale_jpeg", "exif_rotated_jpeg_6", "webp_lossy"):
        assert f"unusual_{unusual}" in keys
    bombs = [r for r in truth["shards"]["images.tar"]["records"] if r["key"].startswith("bomb_")]
    assert {"bomb_real_png_12000x12000", "bomb_forged_png_header_2147483647_squared"} <= {r["key"] for r in bombs}
    with tarfile.open(out / "images.tar") as tf:
        assert len(tf.extractfile("bomb_forged_png_header_2147483647_squared.png").read()) < 100
    assert {"../escape", "/abs/path/sample"} <= keys
    assert any("symlink" in m["why"] for m in truth["shards"]["links.tar"]["skipped_members"])
    assert {"gzipped.tar.gz", "zero_bytes.tar", "not_a_tar_random.tar", "cut_in_image.tar", "cut_in_header.tar",
            "garbage_after_end.tar", *SHELL_NAMES} <= set(truth["shards"])
    assert all((out / f).is_file() for f in truth["files"])
    expects = Counter(v["expect"] for v in truth["videos"].values())
    assert expects["ok"] >= 2 and expects["broken"] >= 1 and expects["not_a_video"] >= 1


def test_good_videos_decode_and_the_cut_one_is_short(corpus):
    import av

    out, truth = corpus
    for name, t in truth["videos"].items():
        if t["expect"] == "ok":
            with av.open(str(out / name)) as c:
                assert sum(1 for _ in c.decode(video=0)) == t["frames"]
    frames = 0
    try:
        with av.open(str(out / "videos" / "truncated.mp4")) as c:
            frames = sum(1 for _ in c.decode(video=0))
    except av.error.FFmpegError:
        pass
    assert frames < truth["videos"]["videos/good_0.mp4"]["frames"]


def test_shell_names_are_files_wherever_they_come_from(corpus, tmp_path, monkeypatch):
    """A shard named like a command or a URL, given as an argument, a glob or a stdin line, is
    the local file of that name: read, never run."""
    out, truth = corpus
    monkeypatch.chdir(out)
    want = sum(truth["shards"][n]["samples"] for n in SHELL_NAMES)
    assert run_inspect(list(SHELL_NAMES), None, InspectOptions(progress=False))["ok"] == want
    assert run_inspect([str(out / "pipe:*.tar"), str(out / "https:*")], None, InspectOptions(progress=False))["ok"] == 6
    p = run_cli("inspect", "-", "--json", "--no-progress", input="\n".join(SHELL_NAMES) + "\n")
    assert orjson.loads(p.stdout)["ok"] == want
    assert _pwned(tmp_path, out.parent, ROOT) == []


def test_same_seed_same_bytes_and_a_rerun_replaces_what_was_there(corpus, tmp_path):
    out, truth = corpus
    other = tmp_path / "again"
    make_world(other, samples=5, shard_size=2, sizes="small")  # a world first: the corpus replaces it
    p = run_cli("world", other, "--faults", "--json")
    assert orjson.loads(p.stdout)["samples"] == truth["totals"]["samples"]
    assert _files(other) == _files(out)
    make_world(other, samples=3, sizes="small")  # and a world replaces the corpus
    assert sorted(_files(other)) == ["00000.tar", "world.json"]


def test_huge_caption_is_written_in_chunks_and_rejected_unread(tmp_path):
    size = 9 * (1 << 20) + 7
    sh = caption_shard(Samples(0), size)
    with open(tmp_path / "c.tar", "wb") as f:
        write_tar(f, sh.members)
    with tarfile.open(tmp_path / "c.tar") as tf:
        assert tf.getmember("caption_huge.txt").size == size
    recs = {r.key if isinstance(r, Reject) else r["__key__"]: r for r in tar_records(shard_refs([str(tmp_path / "c.tar")])[0])}
    assert recs["caption_huge"].reason == "member_too_large" and str(size) in recs["caption_huge"].detail
    assert len(recs["caption_exactly_at_cap"]["txt"]) == 1 << 20


def test_faults_options_are_checked(tmp_path):
    from vlmtool.errors import UsageError

    with pytest.raises(UsageError, match="over the text cap"):
        make_faults(tmp_path / "x", huge_caption_bytes=1000)
    p = run_cli("world", tmp_path / "y", "--faults", "--samples", "9", check=False)
    assert p.returncode == 2 and "--samples" in p.stderr and "Traceback" not in p.stderr
    assert not os.path.exists(tmp_path / "y")


class _Hang(BaseException):
    """Raised by the alarm: a BaseException, so the reader's own error handling cannot turn it into a reject."""


def test_a_member_declaring_an_absurd_size_ends_the_shard_at_once(tmp_path):
    import signal

    from vlmtool.world.faults import overdeclared_member_tar

    path = tmp_path / "overdeclared.tar"
    path.write_bytes(overdeclared_member_tar(Samples(0)))

    def hang(*_):
        raise _Hang("still reading after 5 s")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(5)  # a liveness guard, not a timing assert: a reader that stops takes milliseconds
    try:
        recs = list(tar_records(shard_refs([str(path)])[0]))
    except _Hang:
        recs = None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert recs is not None, "the reader did not stop"
    assert [r.key if isinstance(r, Reject) else r["__key__"] for r in recs] == ["a", "b"]
    assert recs[1].reason in ("broken_tar", "member_too_large")
