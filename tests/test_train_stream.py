"""The training stream's cache of prepared items: later epochs replay a shard's items from
memory instead of reading and preparing it again, and the stream (so the batches, so the
weights) is the same item for item, within a byte budget or past it."""

import itertools

import pytest
from safetensors.torch import load_file

from conftest import FIXTURES
from vlmtool.core.records import Reject
from vlmtool.core.shards import expand_inputs, shard_refs
from vlmtool.core.train import EpochEnd, TrainStream


def stream_of(world, epochs: int, **kw):
    """(what the stream yields over `epochs` passes, how many samples were prepared)."""
    calls = []

    def prepare(s):
        calls.append(s.key)
        return (s.key, bytes(100))  # 100 "bytes" an item

    refs = shard_refs(expand_inputs([str(world)]))
    out, ends = [], 0
    for item in TrainStream(refs, prepare, seed=3, rank=0, world=1, buffer=7, **kw):
        out.append(item.key if isinstance(item, Reject) else item if isinstance(item, EpochEnd) else item[0])
        ends += isinstance(item, EpochEnd)
        if ends == epochs:
            break
    return out, len(calls)


def test_cached_epochs_replay_the_same_stream_rejects_included_and_prepare_each_sample_once(faulty_world):
    plain, plain_calls = stream_of(faulty_world, 3)
    cached, cached_calls = stream_of(faulty_world, 3, cache_bytes=1 << 20, item_bytes=lambda it: 100)
    assert cached == plain
    assert any(isinstance(x, str) for x in plain) and sum(isinstance(x, EpochEnd) for x in plain) == 3
    first_epoch = plain_calls // 3
    assert plain_calls == 3 * first_epoch and cached_calls == first_epoch  # epochs 2 and 3 came from memory


def test_a_budget_that_holds_some_shards_caches_those_and_reads_the_rest_again(faulty_world):
    plain, plain_calls = stream_of(faulty_world, 3)
    per_epoch = plain_calls // 3
    # 5 shards of 12 samples, about a third broken: each shard ~1,800 bytes (256 a reject); 4,000 hold two
    some, some_calls = stream_of(faulty_world, 3, cache_bytes=4000, item_bytes=lambda it: 100)
    assert some == plain and per_epoch < some_calls < plain_calls
    none, none_calls = stream_of(faulty_world, 3, cache_bytes=0, item_bytes=lambda it: 100)
    assert none == plain and none_calls == plain_calls


@pytest.mark.parametrize("workers", [0, 1])
def test_clip_train_gives_the_same_weights_with_and_without_the_cache(tmp_path, workers, monkeypatch):
    import vlmtool.clip.preprocess as pre
    from vlmtool.clip.options import ClipTrainOptions
    from vlmtool.clip.train import run_clip_train

    decoded = itertools.count()
    fast = pre.fast_pixels
    monkeypatch.setattr(pre, "fast_pixels", lambda *a: (next(decoded), fast(*a))[1])  # counts in-process decodes
    weights, counts = [], []
    for mb in (0, 64):
        before = next(decoded)
        opts = ClipTrainOptions(model="tiny-clip", steps=12, batch_size=8, warmup=2, workers=workers, cache_mb=mb,
                                save_every=12, progress=False)
        run_clip_train([str(FIXTURES / "shapes")], str(tmp_path / f"m{mb}"), opts)  # 96 samples: 4 passes over the world's good ones
        counts.append(next(decoded) - before - 1)
        weights.append(load_file(str(tmp_path / f"m{mb}" / "model.safetensors")))
    assert weights[0].keys() == weights[1].keys() and all((weights[0][k] == weights[1][k]).all() for k in weights[0])
    if workers == 0:  # a worker process decodes out of reach of the count
        assert counts[1] * 3 <= counts[0], counts
