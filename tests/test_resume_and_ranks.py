"""A job killed mid-run and rerun counts every sample exactly once; torchrun ranks split the
shards and together give the one-process totals."""

import os
import signal
import subprocess
import sys
import time

import orjson
import pytest

from conftest import run_cli
from vlmtool.world import make_world


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("many")
    make_world(out, samples=96, shard_size=8, seed=11, broken=0.1, sizes="small")
    return out


def _records(job):
    return {p.stem: (orjson.loads(p.read_bytes()), p.stat().st_mtime_ns) for p in (job / "_done").glob("*.json")}


@pytest.mark.slow  # several CLI processes
def test_sigkill_mid_run_then_rerun_counts_each_sample_once(many_shards, tmp_path):
    # Each shard arrives through a slow pipe (webdataset's pipe: URLs), so the kill lands mid-job.
    inputs = "\n".join(f"pipe:sleep 0.25; cat {p}" for p in sorted(many_shards.glob("*.tar")))
    job = tmp_path / "job"
    cmd = [sys.executable, "-m", "vlmtool", "inspect", "-", "--out", str(job), "--workers", "2", "--no-progress", "--json"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    proc.stdin.write(inputs.encode())
    proc.stdin.close()
    deadline = time.time() + 60
    while len(list((job / "_done").glob("*.json"))) < 3 and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = _records(job)
    assert 3 <= len(first) < 12, "the kill should land mid-run"
    assert not (job / "manifest.json").exists()

    s = orjson.loads(run_cli("inspect", "-", "--out", job, "--no-progress", "--json", input=inputs).stdout)
    truth = orjson.loads((many_shards / "world.json").read_bytes())
    assert s["complete"] and s["samples"] == 96
    assert s["rejected"] == {k: v for k, v in truth["counts"]["broken"].items() if v}
    assert s["this_run"]["shards_skipped"] == len(first)
    final = _records(job)
    assert len(final) == 12
    for name, rec in first.items():  # finished shards were not redone
        assert final[name] == rec
    rejects = (job / "rejects.jsonl").read_bytes().splitlines()
    assert len(rejects) == len(set(rejects)) == sum(s["rejected"].values())


@pytest.mark.slow  # several CLI processes
def test_torchrun_two_ranks_match_one_process(many_shards, tmp_path):
    one = orjson.loads(run_cli("inspect", many_shards, "--out", tmp_path / "one", "--no-progress", "--json").stdout)
    p = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
         "-m", "vlmtool", "inspect", str(many_shards), "--out", str(tmp_path / "two"), "--no-progress", "--json", "--workers", "1"],
        capture_output=True, text=True, timeout=240,
    )
    assert p.returncode == 0, p.stderr
    manifest = orjson.loads((tmp_path / "two" / "manifest.json").read_bytes())
    assert manifest["complete"] and manifest["world_size"] == 2 and manifest["launcher"] == "torchrun"
    for k in ("samples", "ok", "rejected", "shards"):
        assert manifest["totals"][k] == one[k]
    ranks = {name: rec["rank"] for name, rec in manifest["shards"].items()}
    assert len(ranks) == 12 and set(ranks.values()) == {0, 1}
    for name, rank in ranks.items():  # round-robin: shard i on rank i % 2
        assert rank == manifest["shards"][name]["index"] % 2


@pytest.mark.slow  # several CLI processes
def test_slurm_variables_assign_ranks(many_shards, tmp_path):
    outs = []
    for r in range(3):
        p = run_cli("inspect", many_shards, "--out", tmp_path / "job", "--no-progress", "--json",
                    env={"SLURM_PROCID": str(r), "SLURM_NTASKS": "3"})
        outs.append(orjson.loads(p.stdout))
    assert [o["complete"] for o in outs] == [False, False, True]
    assert sum(o["this_run"]["samples"] for o in outs) == 96 == outs[-1]["samples"]
