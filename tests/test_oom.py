"""Out-of-memory backoff (core/oom.py), tested on CPU by injecting the error
(VLMTOOL_INJECT_OOM=first: the first compute call of every shard, the first training step):
the job completes, its outputs are those of an uninterrupted run at half the batch, byte for
byte, and the summary counts the backoffs."""

from __future__ import annotations

import pytest
import torch
from test_train_data import make_features, make_instructions, one_thread, tiny_opts  # noqa: F401 (one_thread: autouse)

from vlmtool.core import oom


@pytest.fixture()
def inject(monkeypatch):
    monkeypatch.setenv(oom.ENV, "first")
    monkeypatch.setattr(oom, "_injected", set())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from vlmtool.clip.model import load_clip
    from vlmtool.world import make_world

    root = tmp_path_factory.mktemp("oom")
    make_world(root / "world", samples=36, shard_size=12, seed=3, mismatch=0.3, broken=0.2, sizes="small")
    torch.manual_seed(0)
    torch.save(load_clip("tiny-clip", "random").model.state_dict(), root / "tiny.pt")
    return root


def test_backoff_halves_and_retries_the_chunk_that_failed(inject):
    b = oom.Backoff(8, "job:shard")
    out = b.chunks(20, lambda a, z: (a, z))
    assert out == [(0, 4), (4, 8), (8, 12), (12, 16), (16, 20)] and b.count == 1 and b.size == 4
    assert oom.Backoff(8, "job:other").chunks(3, lambda a, z: (a, z)) == [(0, 2), (2, 3)]  # 8 -> 4 -> 2: below the 3 that failed


def test_a_batch_of_one_that_does_not_fit_ends_the_job(inject):
    from vlmtool.errors import JobFailed

    with pytest.raises(JobFailed, match="out of device memory with a batch of 1"):
        oom.Backoff(1, "job:shard").chunks(1, lambda a, z: None)


def test_other_errors_are_not_caught():
    with pytest.raises(ValueError):
        oom.Backoff(4, "k").chunks(4, lambda a, z: (_ for _ in ()).throw(ValueError("x")))


def _filter(world, name, bs, **kw):
    from vlmtool.filter import FilterOptions, run_filter

    opts = FilterOptions(pretrained=str(world / "tiny.pt"), model="tiny-clip", min_score=0.0, batch_size=bs, workers=0,
                         device="cpu", progress=False, **kw)
    return run_filter([str(world / "world")], str(world / name), opts)


def _outputs(folder, names):
    return {n: (folder / n).read_bytes() for n in names}


def test_filter_backs_off_to_the_outputs_of_a_run_at_half_the_batch(world, inject, monkeypatch):
    got = _filter(world, "f-oom", 8)
    assert got["complete"] and got["oom_backoffs"] == 3  # one a shard
    monkeypatch.delenv(oom.ENV)
    want = _filter(world, "f-half", 4)
    assert want["oom_backoffs"] == 0
    names = ["scores.jsonl", "report.json", "rejects.jsonl"] + [f"shards/{p.name}" for p in sorted((world / "f-half" / "shards").iterdir())]
    assert _outputs(world / "f-oom", names) == _outputs(world / "f-half", names)


def _encode(world, name, bs):
    from vlmtool.encode import EncodeOptions, run_encode

    opts = EncodeOptions(pretrained=str(world / "tiny.pt"), model="tiny-clip", batch_size=bs, workers=0, device="cpu",
                         progress=False, pooled=True)
    return run_encode([str(world / "world")], str(world / name), opts)


def test_encode_backs_off_to_the_outputs_of_a_run_at_half_the_batch(world, inject, monkeypatch):
    got = _encode(world, "e-oom", 8)
    assert got["complete"] and got["oom_backoffs"] == 3
    monkeypatch.delenv(oom.ENV)
    want = _encode(world, "e-half", 4)
    names = ["features.json", "rejects.jsonl"] + [f"shards/{p.name}" for p in sorted((world / "e-half" / "shards").iterdir())]
    assert _outputs(world / "e-oom", names) == _outputs(world / "e-half", names)


def test_train_backs_off_to_micro_batches_with_the_same_weights(tmp_path, inject, monkeypatch):
    from safetensors.torch import load_file

    from vlmtool.vlm.train import run_train

    feats = make_features(tmp_path / "feats")
    got = run_train([str(feats)], str(tmp_path / "oom"), tiny_opts(stage=1, steps=3, batch_size=4))
    assert got["complete"] and got["oom_backoffs"] == 1 and got["precision"] == "fp32"
    monkeypatch.delenv(oom.ENV)
    want = run_train([str(feats)], str(tmp_path / "whole"), tiny_opts(stage=1, steps=3, batch_size=4))
    assert want["oom_backoffs"] == 0
    a, b = load_file(str(tmp_path / "oom" / "model.safetensors")), load_file(str(tmp_path / "whole" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) < 1e-6
    ck = (tmp_path / "oom" / "checkpoint.json").read_text()
    assert '"precision"' in ck
