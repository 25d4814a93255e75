"""`--executor ray`: on a local Ray (2 CPUs) every shard job writes the bytes the default
executor writes, and a SIGKILLed Ray worker or driver costs nothing but time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

RAY = {"executor": "ray", "ray_workers": 2, "workers": 0, "progress": False}
LOCAL = {"workers": 0, "progress": False}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    """A random tiny-clip saved as a clip-train folder."""
    import torch

    from vlmtool.clip.model import load_clip
    from vlmtool.clip.train import save_model

    torch.manual_seed(0)
    loaded = load_clip("tiny-clip", "random")
    out = tmp_path_factory.mktemp("tower")
    save_model(out, loaded.model, loaded, 0, {"test": True})
    return out


def outputs(folder: Path) -> dict[str, bytes]:
    """Every file of a job folder but its bookkeeping (records, lock, manifest, job settings)."""
    skip = ("_done", "_state", "manifest.json", "_job.json")
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".lock") and p.relative_to(folder).parts[0] not in skip}


def totals(folder: Path) -> dict:
    """The manifest's counts (less the paths that name the folder itself)."""
    t = orjson.loads((folder / "manifest.json").read_bytes())["totals"]
    return {k: v for k, v in t.items() if not (isinstance(v, str) and str(folder) in v)}


def same_bytes(name: str, x: bytes, y: bytes) -> bool:
    """A file's bytes equal; a JSONL file's records equal but for floats within 1e-6: a score is a
    float32 dot product, and a process that splits the matmul over another number of threads may
    round its last bit otherwise (seen on a 2-core AMD EPYC, 6e-8 apart, where an Intel Xeon gave
    the same bytes)."""
    if x == y:
        return True
    if not name.endswith(".jsonl"):
        return False
    xs, ys = x.splitlines(), y.splitlines()
    return len(xs) == len(ys) and all(orjson.loads(u) == pytest.approx(orjson.loads(v), abs=1e-6) for u, v in zip(xs, ys))


def same_job(a: Path, b: Path) -> None:
    oa, ob = outputs(a), outputs(b)
    assert sorted(oa) == sorted(ob)
    assert [k for k in oa if not same_bytes(k, oa[k], ob[k])] == []
    assert totals(a) == totals(b)
    assert not [p for p in b.rglob("*.tmp")]


def test_inspect_on_ray_equals_the_default_executor(faulty_world, tmp_path):
    from vlmtool.inspect_shards import InspectOptions, run_inspect

    a = run_inspect([str(faulty_world)], str(tmp_path / "a"), InspectOptions(**LOCAL))
    b = run_inspect([str(faulty_world)], str(tmp_path / "b"), InspectOptions(**RAY))
    assert b["complete"] and b["this_run"]["shards_done"] == 5
    assert {k: v for k, v in a.items() if k not in ("out", "this_run")} == {k: v for k, v in b.items() if k not in ("out", "this_run")}
    same_job(tmp_path / "a", tmp_path / "b")


@pytest.mark.parametrize("select", [{"min_score": 0.0}, {"keep_fraction": 0.5}])
def test_filter_on_ray_equals_the_default_executor(faulty_world, tower, tmp_path, select):
    from vlmtool.filter import FilterOptions, run_filter

    a = run_filter([str(faulty_world)], str(tmp_path / "a"), FilterOptions(pretrained=str(tower), **select, **LOCAL))
    b = run_filter([str(faulty_world)], str(tmp_path / "b"), FilterOptions(pretrained=str(tower), **select, **RAY))
    assert b["complete"] and 0 < b["kept"] == a["kept"] and b["threshold"] == a["threshold"]
    same_job(tmp_path / "a", tmp_path / "b")  # kept shards, scores.jsonl, report, rejects
    assert len(list((tmp_path / "b" / "shards").glob("*.tar"))) == 5


def test_encode_on_ray_equals_the_default_executor(faulty_world, tower, tmp_path):
    from vlmtool.encode import EncodeOptions, run_encode

    run_encode([str(faulty_world)], str(tmp_path / "a"), EncodeOptions(pretrained=str(tower), pooled=True, **LOCAL))
    b = run_encode([str(faulty_world)], str(tmp_path / "b"), EncodeOptions(pretrained=str(tower), pooled=True, **RAY))
    assert b["complete"] and b["ok"] > 0
    same_job(tmp_path / "a", tmp_path / "b")  # feature shards, features.json, rejects


def test_synth_and_export_on_ray_equal_the_default_executor(faulty_world, tmp_path):
    from vlmtool.export import ExportOptions, run_export
    from vlmtool.synth.job import SynthOptions, run_synth

    run_synth([str(faulty_world)], str(tmp_path / "a"), SynthOptions(progress=False))
    b = run_synth([str(faulty_world)], str(tmp_path / "b"), SynthOptions(progress=False, executor="ray"))
    assert b["complete"] and b["instructions"] > 0
    same_job(tmp_path / "a", tmp_path / "b")  # instructions.jsonl, the request log, rejects
    again = run_synth([str(faulty_world)], str(tmp_path / "b"), SynthOptions(progress=False, executor="ray"))
    assert again["this_run"]["sent"] == 0  # the log holds every result: nothing is asked twice
    inst = str(tmp_path / "a" / "instructions.jsonl")
    run_export(inst, [str(faulty_world)], str(tmp_path / "xa"), ExportOptions(to="wds", progress=False))
    run_export(inst, [str(faulty_world)], str(tmp_path / "xb"), ExportOptions(to="wds", progress=False, executor="ray", ray_workers=2))
    same_job(tmp_path / "xa", tmp_path / "xb")


# ---- kills: a shard's input stalls mid-stream (once, on its first read) so the kill lands mid-shard


def stalled_inputs(world: Path, marker: Path, stall: int = 1) -> list[str]:
    """The world's shards, shard `stall` read through a pipe that stops half-way for 20 s the
    first time it is read (it leaves `marker`); a later read (the retry, the rerun) runs through."""
    tars = sorted(str(p) for p in world.glob("*.tar"))
    t = tars[stall]
    half = os.path.getsize(t) // 2
    tars[stall] = f"pipe:head -c {half} {t}; test -e {marker} || (touch {marker}; exec sleep 20); tail -c +{half + 1} {t}"
    return tars


def stalled_sleep(marker: Path, timeout: float = 120) -> int:
    """The pid of the stall's `sleep`, once the marker is there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.exists():
            for p in Path("/proc").iterdir():
                try:
                    cmd = (p / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if p.name.isdigit() and cmd[:2] == [b"sleep", b"20"] and str(marker).encode() in _parent_cmd(int(p.name)):
                    return int(p.name)
        time.sleep(0.05)
    raise AssertionError("the stalled shard was never read")


def _parent_cmd(pid: int) -> bytes:
    return Path(f"/proc/{_ppid(pid)}/cmdline").read_bytes()


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def reader_of(pid: int) -> int:
    """The Ray worker process above a pipe's process (its title is ray::...)."""
    while pid > 1:
        pid = _ppid(pid)
        if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::"):
            return pid
    raise AssertionError("no Ray worker above the pipe")


def test_a_ray_worker_killed_mid_shard_is_redone_to_the_same_bytes(faulty_world, tower, tmp_path):
    from vlmtool.encode import EncodeOptions, run_encode

    marker = tmp_path / "stalled"
    inputs = stalled_inputs(faulty_world, marker)
    opts = EncodeOptions(pretrained=str(tower), batch_size=2, **RAY)
    result: dict = {}
    driver = threading.Thread(target=lambda: result.update(run_encode(inputs, str(tmp_path / "killed"), opts)))
    driver.start()
    sleeper = stalled_sleep(marker)
    actor = reader_of(sleeper)
    deadline = time.monotonic() + 10  # the reader is stalled half-way through the shard: let its first batches land
    while not list((tmp_path / "killed" / "shards").glob(".*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not result and not (tmp_path / "killed" / "manifest.json").exists()  # killed mid-job, its shard unfinished
    os.kill(actor, signal.SIGKILL)
    os.kill(sleeper, signal.SIGKILL)
    driver.join(timeout=240)
    assert not driver.is_alive() and result["complete"]
    run_encode(inputs, str(tmp_path / "calm"), EncodeOptions(pretrained=str(tower), batch_size=2, **LOCAL))  # marker there: no stall
    same_job(tmp_path / "calm", tmp_path / "killed")


def test_a_killed_ray_driver_resumes_on_rerun(faulty_world, tower, tmp_path):
    marker = tmp_path / "stalled"
    inputs = stalled_inputs(faulty_world, marker)
    address = ray.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "vlmtool", "filter", *inputs, "--pretrained", str(tower), "--keep-fraction", "0.5", "--out",
           str(tmp_path / "killed"), "--executor", "ray", "--ray-address", address, "--ray-workers", "1", "--workers", "0",
           "--no-progress", "--json"]
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    sleeper = stalled_sleep(marker)
    driver.kill()
    driver.wait()
    os.kill(sleeper, signal.SIGKILL)
    assert not (tmp_path / "killed" / "manifest.json").exists()
    rerun = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    summary = orjson.loads(rerun.stdout)
    assert summary["complete"] and summary["this_run"]["scored"] < summary["ok"]  # the first driver's shards were kept
    from vlmtool.filter import FilterOptions, run_filter

    run_filter(inputs, str(tmp_path / "calm"), FilterOptions(pretrained=str(tower), keep_fraction=0.5, **LOCAL))
    same_job(tmp_path / "calm", tmp_path / "killed")
