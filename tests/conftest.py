import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


# The suite runs on every core under pytest-xdist (pyproject's addopts: -n logical, --dist
# loadscope: a module's tests on one worker, so a module's fixtures are made once). The longest
# test goes first, so that it runs beside the others rather than after them; what several modules
# share and is costly to make is made once per run, by whichever worker asks first (shared_once).
_LONGEST_FIRST = ("test_a_reduced_demo_looks_and_a_blinded_copy_does_not",)


def pytest_collection_modifyitems(config, items):
    """Fast by default: tests marked slow run in CI (CI=true, as .ci/run sets), with
    VLMTOOL_SLOW=1, or when a -m expression is given (`-m slow` runs only them)."""
    items.sort(key=lambda item: item.name not in _LONGEST_FIRST)  # stable: the rest keep their order
    if os.environ.get("CI") or os.environ.get("VLMTOOL_SLOW") or config.getoption("markexpr"):
        return
    skip = pytest.mark.skip(reason="slow: runs in CI (CI=true) or with VLMTOOL_SLOW=1 / -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def shared_once(tmp_path_factory, name: str, make):
    """`make(folder)`'s JSON result, made once per test run: under pytest-xdist in the run's
    common temporary folder, by the first worker to ask while the others wait on a file lock;
    without xdist in this session's own folder."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # xdist: <run>/popen-gwN
    folder, done = root / f"shared-{name}", root / f"shared-{name}.json"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not done.exists():
            folder.mkdir(exist_ok=True)
            done.write_text(json.dumps(make(folder)))
    return folder, json.loads(done.read_text())


def run_cli(*args, input=None, env=None, check=True, timeout=300):
    """Run `python -m vlmtool ARGS` as a user would; returns the CompletedProcess."""
    e = {**os.environ, **(env or {})}
    p = subprocess.run([sys.executable, "-m", "vlmtool", *map(str, args)], capture_output=True, text=True,
                       input=input, env=e, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"vlmtool {' '.join(map(str, args))} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def json_out(p) -> dict:
    return json.loads(p.stdout)


def sha256_of(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def faulty_world(tmp_path_factory):
    """60 small samples in 5 shards, with every kind of broken sample."""
    from vlmtool.world import make_world

    out = tmp_path_factory.mktemp("faulty")
    make_world(out, samples=60, shard_size=12, seed=3, mismatch=0.3, broken=0.35, sizes="small")
    return out


@pytest.fixture(scope="session")
def trained_clip(tmp_path_factory):
    """A tiny CLIP trained here on a clean shapes world: 150 steps, about 80 s on 2 cores."""
    from vlmtool.clip.train import ClipTrainOptions, run_clip_train
    from vlmtool.world import make_world

    def make(root):
        make_world(root / "train", samples=2000, shard_size=250, seed=1, sizes="small")
        return run_clip_train([str(root / "train")], str(root / "model"),
                              ClipTrainOptions(model="tiny-clip", steps=150, batch_size=128, workers=1, seed=0, save_every=1000,
                                               progress=False))

    root, summary = shared_once(tmp_path_factory, "clip", make)
    assert summary["steps"] == 150
    return root / "model", summary


@pytest.fixture(scope="session")
def heldout_world(tmp_path_factory):
    """Held-out samples (another seed), 30% mismatched captions, 5% broken."""
    from vlmtool.world import make_world

    out = tmp_path_factory.mktemp("heldout")
    make_world(out, samples=400, shard_size=50, seed=99, mismatch=0.3, broken=0.05, sizes="small")
    return out


def world_truth(world) -> dict:
    """key -> the sample's JSON truth, read back from the shards."""
    import tarfile

    import orjson

    truth = {}
    for t in sorted(Path(world).glob("*.tar")):
        with tarfile.open(t) as tf:
            for m in tf:
                if m.name.endswith(".json"):
                    truth[m.name.split(".")[0]] = orjson.loads(tf.extractfile(m).read())
    return truth
