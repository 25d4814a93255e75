"""Every benchmark script runs in its tiny mode and prints a ratio: nothing else runs bench/, so
without this they rot silently (bench/train.py once crashed on feature metadata it did not write)."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# gpu.py runs through bench/gpu.sh --dry in tests/test_bench_gpu.py
BENCHES = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if not p.stem.startswith("_") and p.stem != "gpu")
RATIO = re.compile(r"ratio|\d[\d.]*x\b")


def test_every_bench_script_is_listed():
    assert set(BENCHES) == {"ablation", "budget", "budget_peers", "encode", "filter", "infer_rss", "inspect_shards", "load", "ray", "rss", "synth", "train"}


@pytest.mark.slow
@pytest.mark.parametrize("name", BENCHES)
def test_bench_tiny_runs_and_prints_a_ratio(name, tmp_path):
    if name == "budget_peers" and importlib.util.find_spec("litellm") is None:
        pytest.skip("budget_peers needs litellm (pip install -e '.[peers]')")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if name != "ray":  # Ray puts its sockets under TMPDIR: pytest's long tmp_path overflows AF_UNIX's 107-byte limit
        env["TMPDIR"] = str(tmp_path)
    p = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), "--tiny"], capture_output=True, text=True, env=env,
                       timeout=600, cwd=tmp_path)
    assert p.returncode == 0, f"{name} exited {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    assert any(RATIO.search(line) for line in p.stdout.splitlines()), p.stdout
