"""The feature-shard reader: samples by rank and worker without mixing shards, padded batches
with a mask, a clear error on another format version, and lm_layout's arrangement of tiles."""

import numpy as np
import orjson
import pytest

from vlmtool.features import (
    FORMAT_NAME,
    FORMAT_VERSION,
    FeatureDataset,
    collate,
    lm_layout,
    npy_bytes,
    read,
)


def write_shards(root, n_shards=5, per_shard=3, dim=4, version=FORMAT_VERSION):
    """Small feature shards: sample j of shard i has 1 + (i + j) % 3 rows, all equal to i * 10 + j."""
    from vlmtool.core.shards import ShardTarWriter

    paths = []
    for i in range(n_shards):
        w = ShardTarWriter(root / f"{i:05d}.tar")
        for j in range(per_shard):
            t = np.full((1 + (i + j) % 3, dim), i * 10 + j, dtype=np.float16)
            meta = {"format": FORMAT_NAME, "version": version, "tokens": len(t), "views": [{"kind": "image", "rows": [0, len(t)]}]}
            w.write({"__key__": f"s{i}_{j}", "tokens.npy": npy_bytes(t), "json": orjson.dumps(meta)})
        w.commit()
        paths.append(str(root / f"{i:05d}.tar"))
    return paths


def test_read_gives_every_sample_in_order(tmp_path):
    paths = write_shards(tmp_path)
    got = list(read(paths))
    assert [s["key"] for s in got] == [f"s{i}_{j}" for i in range(5) for j in range(3)]
    assert all(s["tokens"].dtype == np.float16 and (s["tokens"] == int(s["key"][1]) * 10 + int(s["key"][3])).all() for s in got)


def test_dataset_splits_by_rank_then_worker_and_keeps_shards_whole(tmp_path, monkeypatch):
    import torch.utils.data as tud

    paths = write_shards(tmp_path)
    seen = []
    for rank in range(2):
        for worker in range(2):
            monkeypatch.setattr(tud, "get_worker_info", lambda w=worker: type("Info", (), {"id": w, "num_workers": 2})())
            keys = [s["key"] for s in FeatureDataset(paths, rank=rank, world_size=2)]
            shards = [int(k[1]) for k in keys]
            assert sorted(set(shards)) == list(range(5))[rank::2][worker::2]
            assert shards == sorted(shards)  # a shard's samples come together, in order
            seen += keys
    assert sorted(seen) == sorted(f"s{i}_{j}" for i in range(5) for j in range(3))


def test_dataset_under_a_real_dataloader_gives_each_sample_once(tmp_path):
    from torch.utils.data import DataLoader

    paths = write_shards(tmp_path)
    keys = [k for b in DataLoader(FeatureDataset(paths), batch_size=2, num_workers=2, collate_fn=collate) for k in b["keys"]]
    assert sorted(keys) == sorted(f"s{i}_{j}" for i in range(5) for j in range(3))
    for i in range(5):  # each shard's samples in their order
        assert [k for k in keys if k.startswith(f"s{i}_")] == [f"s{i}_{j}" for j in range(3)]


def test_collate_pads_and_masks(tmp_path):
    samples = list(read(write_shards(tmp_path, n_shards=1)))
    b = collate(samples)
    lengths = [len(s["tokens"]) for s in samples]
    assert b["tokens"].shape == (3, max(lengths), 4) and b["mask"].sum(1).tolist() == lengths
    for i, n in enumerate(lengths):
        assert (b["tokens"][i, :n] == float(i)).all() and (b["tokens"][i, n:] == 0).all()


def test_another_version_is_a_clear_usage_error(tmp_path):
    from vlmtool.errors import UsageError
    from vlmtool.features import read_features_json

    paths = write_shards(tmp_path, n_shards=1, version=FORMAT_VERSION + 1)
    with pytest.raises(UsageError, match=f"version {FORMAT_VERSION + 1}.*re-encode"):
        list(read(paths))
    (tmp_path / "features.json").write_bytes(orjson.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION + 1}))
    with pytest.raises(UsageError, match="re-encode"):
        read_features_json(tmp_path)


def _anyres_meta(crop):
    """A 2x2-patch tower: base view rows 0..3, tiles (0, 0) rows 4..7 and (0, 1) rows 8..11."""
    views = [{"kind": "base", "rows": [0, 4], "grid": [2, 2]},
             {"kind": "tile", "rows": [4, 8], "grid": [2, 2], "cell": [0, 0]},
             {"kind": "tile", "rows": [8, 12], "grid": [2, 2], "cell": [0, 1]}]
    return {"views": views, "layout": {"kind": "anyres", "tiles": [1, 2], "feature_grid": [2, 4], "crop": crop}}


def test_lm_layout_lays_the_tiles_out_as_one_feature_grid_with_row_newlines():
    rows, newline_after = lm_layout(_anyres_meta([0, 0, 2, 4]))
    # base, then feature row 0 (tile 0's first patch row, tile 1's first), then feature row 1
    assert rows == [0, 1, 2, 3, 4, 5, 8, 9, 6, 7, 10, 11] and newline_after == [7, 11]
    rows, newline_after = lm_layout(_anyres_meta([0, 1, 2, 2]))  # padding cropped: one column off each side
    assert rows == [0, 1, 2, 3, 5, 8, 7, 10] and newline_after == [5, 7]
    rows, newline_after = lm_layout({"views": [{"kind": "frame", "rows": [0, 3]}, {"kind": "frame", "rows": [3, 6]}]})
    assert rows == list(range(6)) and newline_after == []
