"""bench/gpu.sh cannot rot: its dry mode (tiny sizes, whatever device there is) runs here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # eight small jobs and two train steps: ~45 s on 2 cores
def test_gpu_bench_dry_mode_prints_images_per_second(tmp_path):
    p = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--dry", "--root", str(tmp_path)], capture_output=True, text=True,
                       env={**os.environ, "PYTHON": sys.executable}, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.splitlines()
    rates = [line for line in lines if re.search(r"images/s, +[0-9.]+ of the model-only bound", line)]
    assert len(rates) == 8  # filter and encode x decode cpu/device x two precisions
    assert {("decode=cpu" in r, "decode=device" in r) for r in rates} == {(True, False), (False, True)}
    assert any(line.startswith("train") and "samples/s" in line for line in lines)
    import torch

    if not torch.cuda.is_available():
        assert lines[0].startswith("no GPU")
