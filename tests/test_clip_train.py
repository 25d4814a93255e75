import pytest
import subprocess
import sys

import orjson

from conftest import FIXTURES, json_out, run_cli


@pytest.mark.slow  # two training runs
def test_resume_continues_from_the_saved_step(tmp_path):
    out = tmp_path / "m"
    a = json_out(run_cli("clip-train", FIXTURES / "shapes", "--out", out, "--steps", "4", "--batch-size", "8", "--save-every", "2",
                         "--workers", "0", "--json", "--no-progress"))
    assert a["steps"] == 4 and (out / "model.safetensors").exists() and (out / "train_state.pt").exists()
    b = run_cli("clip-train", FIXTURES / "shapes", "--out", out, "--steps", "6", "--batch-size", "8", "--workers", "0", "--json", "--no-progress")
    assert "resuming" in b.stderr and "at step 4" in b.stderr
    assert json_out(b)["steps"] == 6
    cfg = orjson.loads((out / "config.json").read_bytes())
    assert cfg["step"] == 6 and cfg["arch"] == "tiny-clip"
    assert orjson.loads((out / "open_clip_config.json").read_bytes())["model_cfg"]["embed_dim"] == 64


@pytest.mark.slow  # two torchrun ranks
def test_ddp_under_torchrun_gathers_negatives_and_saves_once(tmp_path):
    out = tmp_path / "ddp"
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29547", "-m", "vlmtool",
                        "clip-train", str(FIXTURES / "shapes"), "--out", str(out), "--steps", "3", "--batch-size", "4", "--workers", "0",
                        "--json", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [orjson.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["rank"] for r in rows) == [0, 1] and all(r["world_size"] == 2 and r["steps"] == 3 for r in rows)
    assert (out / "model.safetensors").exists()
