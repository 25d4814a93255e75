"""The demo's worlds never share an image: the model is trained on one, tuned on another and
reported on a third (and the CLIP learns on a fourth), whatever --seed is."""

import hashlib

import pytest
from conftest import run_cli


def _pixel_hashes(folder) -> set[str]:
    """sha256 of each sample's decoded pixels (the same picture re-encoded is the same image)."""
    import io

    from PIL import Image

    from vlmtool.core.records import Reject, tar_records
    from vlmtool.core.shards import shard_refs

    out = set()
    for ref in shard_refs(sorted(str(t) for t in folder.glob("*.tar"))):
        for rec in tar_records(ref):
            if isinstance(rec, Reject) or "jpg" not in rec:
                continue
            try:
                img = Image.open(io.BytesIO(rec["jpg"])).convert("RGB")
            except Exception:  # the train world's broken samples
                continue
            out.add(hashlib.sha256(img.tobytes() + repr(img.size).encode()).hexdigest())
    return out


def test_the_four_worlds_share_no_image_across_seeds(tmp_path):
    from vlmtool.demo import DemoOptions, make_worlds, world_seeds

    hashes: dict[tuple[int, str], set[str]] = {}
    for seed in (0, 1):
        opts = DemoOptions(samples=96, clip_samples=96, dev=64, test=64, seed=seed, progress=False)
        seeds = world_seeds(opts)
        assert len(set(seeds.values())) == 4
        for name, folder in make_worlds(tmp_path / f"s{seed}", opts).items():
            hashes[(seed, name)] = _pixel_hashes(folder)
            assert len(hashes[(seed, name)]) >= 0.9 * 64, (seed, name)
    assert hashes[(0, "test")] == hashes[(1, "test")] and hashes[(0, "dev")] == hashes[(1, "dev")]  # the same for every seed
    names = sorted({k for k in hashes if not (k[0] == 1 and k[1] in ("dev", "test"))})
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not hashes[a] & hashes[b], (a, b)


@pytest.mark.parametrize("seed", [0, 1, 12_345, 89_999])
def test_every_allowed_seed_keeps_the_four_world_seeds_apart(seed):
    from vlmtool.demo import DemoOptions, world_seeds

    seeds = world_seeds(DemoOptions(seed=seed))
    assert len(set(seeds.values())) == 4 and max(seeds["train"], seeds["clip"]) < min(seeds["dev"], seeds["test"])


@pytest.mark.parametrize("seed", [-1, 90_000, 10**9])
def test_a_seed_that_would_reach_the_dev_or_test_world_is_refused_before_writing(seed, tmp_path):
    from vlmtool.demo import DemoOptions, run_demo
    from vlmtool.errors import UsageError

    with pytest.raises(UsageError, match="--seed must be 0 to 89,999"):
        run_demo(str(tmp_path / "demo"), DemoOptions(seed=seed))
    assert not (tmp_path / "demo").exists()
    p = run_cli("demo", "--out", tmp_path / "cli", "--seed", seed, check=False)
    assert p.returncode == 2 and not (tmp_path / "cli").exists()
