import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


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
