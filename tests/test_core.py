import io
import os
import tarfile

import pytest

from conftest import FIXTURES, json_out, run_cli
from vlmtool.core.runtime import Dist, dist_info
from vlmtool.core.records import Reject, tar_records
from vlmtool.core.samples import SampleError, decode_image, parse_record
from vlmtool.core.shards import ShardTarWriter, assign, atomic_path, expand_inputs, shard_refs
from vlmtool.errors import UsageError
from vlmtool.inspect_shards import InspectOptions, run_inspect
from vlmtool.world import make_world


# ------------------------------------------------------------------ runtime


def test_rank_from_torchrun_then_slurm_then_local():
    assert dist_info({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "SLURM_PROCID": "3", "SLURM_NTASKS": "8"}) == Dist(1, 4, 1, "torchrun")
    assert dist_info({"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}) == Dist(3, 8, 1, "slurm")
    assert dist_info({}) == Dist(0, 1, 0, "local")
    with pytest.raises(UsageError):
        dist_info({"RANK": "4", "WORLD_SIZE": "4"})


def test_auto_precision_is_fp32_on_cpu():
    import torch

    from vlmtool.core.runtime import resolve_device, resolve_precision

    dev = resolve_device("cpu")
    assert resolve_precision("auto", dev) is None
    assert resolve_precision("bf16", dev) is torch.bfloat16
    with pytest.raises(UsageError):
        resolve_precision("fp8", dev)


# ------------------------------------------------------------------ inputs and shards


def test_inputs_from_braces_globs_dirs_and_stdin(tmp_path):
    for i in range(3):
        (tmp_path / f"{i:05d}.tar").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    want = [str(tmp_path / f"{i:05d}.tar") for i in range(3)]
    assert expand_inputs([str(tmp_path / "{00000..00002}.tar")]) == want
    assert expand_inputs([str(tmp_path / "*.tar")]) == want
    assert expand_inputs([str(tmp_path)]) == want
    assert expand_inputs(["-"], stdin=io.StringIO("\n".join(want[::-1]) + "\n\n")) == want[::-1]
    assert expand_inputs([want[0], want[0], want[1]]) == want[:2]  # duplicates dropped
    with pytest.raises(UsageError, match="does not exist"):
        expand_inputs([str(tmp_path / "missing.tar")])
    with pytest.raises(UsageError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.tgz")])


def test_every_shard_goes_to_exactly_one_rank():
    items = list(range(23))
    for world in (1, 2, 3, 8, 30):
        parts = [assign(items, r, world) for r in range(world)]
        assert sorted(x for p in parts for x in p) == items


def test_shard_names_are_unique():
    refs = shard_refs(["a/00000.tar", "b/00000.tar", "b/00001.tar", "pipe:cat c/00002.tar"])
    assert [r.name for r in refs] == ["00000-00000", "00001-00000", "00001", "00002"]


def test_atomic_path_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and len(list(tmp_path.iterdir())) == 1


def test_shard_writer_is_invisible_until_commit(tmp_path):
    w = ShardTarWriter(tmp_path / "00000.tar")
    w.write({"__key__": "k1", "txt": b"hello"})
    assert not (tmp_path / "00000.tar").exists()
    w.commit()
    with tarfile.open(tmp_path / "00000.tar") as tf:
        assert tf.getnames() == ["k1.txt"]


# ------------------------------------------------------------------ samples and rejects


def _jpeg(size=(32, 32)):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "record, reason",
    [
        ({"txt": b"a cat"}, "missing_image"),
        ({"jpg": b"\x00" * 100, "txt": b"a cat"}, "corrupt_image"),
        ({"jpg": _jpeg(), "txt": b" \n"}, "empty_caption"),
        ({"jpg": _jpeg()}, "missing_caption"),
        ({"jpg": _jpeg(), "txt": b"\xff\xfe"}, "bad_caption_encoding"),
        ({"jpg": _jpeg(), "txt": b"x", "json": b"{nope"}, "bad_json"),
        ({"jpg": _jpeg((200, 200)), "txt": b"x"}, "image_too_large"),
    ],
)
def test_parse_record_rejects_by_reason(record, reason):
    with pytest.raises(SampleError) as e:
        parse_record({"__key__": "k", **record}, "s", max_pixels=10_000)
    assert e.value.reason == reason


def test_truncated_jpeg_is_reported_as_truncated():
    data = _jpeg((256, 256))
    with pytest.raises(SampleError) as e:
        decode_image(data[: len(data) // 2])
    assert e.value.reason == "truncated_image"
    assert decode_image(data).size == (256, 256)
    assert decode_image(data, draft=(32, 32)).size == (32, 32)  # JPEG draft: 1/8 scale


def test_every_broken_kind_is_counted_and_the_rest_processed(faulty_world, tmp_path):
    import orjson

    world = orjson.loads((faulty_world / "world.json").read_bytes())
    want = {k: v for k, v in world["counts"]["broken"].items() if v}
    assert len(want) == 7, "the fixture world should hold every broken kind"
    s = run_inspect([str(faulty_world)], str(tmp_path / "job"), InspectOptions(workers=0, progress=False))
    assert s["complete"] and s["samples"] == 60
    assert s["rejected"] == want
    assert s["ok"] == 60 - sum(want.values())
    rejects = [orjson.loads(x) for x in (tmp_path / "job" / "rejects.jsonl").read_bytes().splitlines()]
    assert len(rejects) == sum(want.values())
    assert all(r["key"] and r["shard"] and r["reason"] in want for r in rejects)


def test_broken_tar_keeps_the_samples_before_the_break(tmp_path):
    make_world(tmp_path / "w", samples=30, shard_size=10, seed=1, broken_tar=True, sizes="small")
    recs = list(tar_records(shard_refs([str(tmp_path / "w" / "00002.tar")])[0]))
    assert 3 <= len(recs) < 10 and isinstance(recs[-1], Reject) and recs[-1].reason == "broken_tar"
    s = run_inspect([str(tmp_path / "w")], str(tmp_path / "job"), InspectOptions(workers=2, progress=False))
    assert s["rejected"] == {"broken_tar": 1}
    assert s["ok"] == 20 + len(recs) - 1
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(os.urandom(3000))
    s = run_inspect([str(garbage)], None, InspectOptions(progress=False))
    assert s["samples"] == 1 and s["rejected"] == {"broken_tar": 1}


def test_strict_fails_fast_with_a_clear_message(faulty_world, tmp_path):
    p = run_cli("inspect", faulty_world, "--out", tmp_path / "j", "--strict", "--no-progress", check=False)
    assert p.returncode == 1
    assert "--strict" in p.stderr and "rejected" in p.stderr and "Traceback" not in p.stderr


def test_inspect_fixture_cli_json(tmp_path):
    p = run_cli("inspect", str(FIXTURES / "shapes" / "{00000..00001}.tar"), "--json", "--no-progress")
    s = json_out(p)
    assert s["samples"] == 32 and s["ok"] + sum(s["rejected"].values()) == 32
    assert s["fields"]["jpg"] == s["ok"]
    assert p.stderr.strip() == "" or "Traceback" not in p.stderr


def test_the_mmap_threshold_is_fixed_only_while_a_shard_job_runs(monkeypatch):
    """run_shards fixes glibc's mmap threshold (flat memory) and sets it high again when done, so
    that a training loop later in the same process (the demo) is not left mapping and faulting
    in every activation of every step."""
    from vlmtool.core import batches, runtime

    calls = []
    monkeypatch.setattr(runtime, "_set_mmap_threshold", lambda n: calls.append(n) or True)

    @runtime.fixed_mmap_threshold()
    def job():
        calls.append("inside")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        job()
    assert calls == [128 << 10, "inside", runtime.MMAP_THRESHOLD_MAX]
    assert batches.run_shards.__wrapped__ is not None  # the shard runner is wrapped the same way


def test_cpu_budget_is_the_fewest_of_affinity_cgroup_quota_and_slurm(tmp_path):
    import os

    from vlmtool.core.runtime import cpu_budget

    mine = len(os.sched_getaffinity(0))
    assert cpu_budget({}, root=str(tmp_path)) == (mine, "affinity")  # no cgroup files, no SLURM
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU: still one thread
    assert cpu_budget({}, root=str(tmp_path)) == (1, "cgroup quota")
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_budget({"SLURM_CPUS_PER_TASK": "1"}, root=str(tmp_path)) == (1, "SLURM_CPUS_PER_TASK")
    assert cpu_budget({"SLURM_CPUS_PER_TASK": "9999"}, root=str(tmp_path))[0] == mine
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_budget({}, root=str(v1))[1] == "affinity"


def test_threads_follow_what_the_process_is_given(tmp_path):
    """A fresh process: an explicit VLMTOOL_THREADS wins; without one, never more threads than the
    budget, and the choice is in the job summary."""
    import json
    import subprocess
    import sys

    from conftest import FIXTURES

    code = ("import torch; from vlmtool.core.runtime import configure_threads, resolve_device, threads_chosen; "
            "resolve_device('cpu'); print(torch.get_num_threads(), threads_chosen()['reason'])")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "VLMTOOL_THREADS")}
    one = subprocess.run([sys.executable, "-c", code], env={**env, "VLMTOOL_THREADS": "1"}, capture_output=True, text=True, check=True)
    assert one.stdout.split()[0] == "1"
    auto = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert 1 <= int(auto.stdout.split()[0]) <= len(os.sched_getaffinity(0)) and "by affinity" in auto.stdout
    out = subprocess.run([sys.executable, "-m", "vlmtool", "encode", str(FIXTURES / "shapes"), "--pretrained", "random", "--model",
                          "tiny-clip", "--out", str(tmp_path / "e"), "--json", "--no-progress", "--workers", "0"],
                         env={**env, "VLMTOOL_THREADS": "1"}, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["threads"]["count"] == 1


def test_train_loop_reports_the_loaders_start_apart_from_the_steps(monkeypatch):
    """The wait for the first batch (loader workers, shards, the shuffle buffer) is reported as
    `startup`, inside `seconds`, so that a short run's rate can be told from its steady rate.
    A fake clock: the first batch takes 5 units, every later batch 1, every step 2."""
    import vlmtool.core.train as ct

    clock = [0.0]
    monkeypatch.setattr(ct.time, "perf_counter", lambda: clock[0])
    calls = []

    def next_batch():
        clock[0] += 5.0 if not calls else 1.0
        calls.append(1)
        return len(calls)

    def train_step(batch, lr, step):
        clock[0] += 2.0
        return {"loss": 1.0 / batch}

    res = ct.train_loop(step=0, steps=4, next_batch=next_batch, train_step=train_step, schedule=ct.Schedule(1e-3, 4),
                        save=lambda step: None, save_every=100, is_main=True, log_path=None, progress=False, batch_size=8)
    assert res.startup == 5.0 and res.seconds == 5.0 + 2 + 3 * (1 + 2) and res.samples == 32
    resumed = ct.train_loop(step=2, steps=4, next_batch=next_batch, train_step=train_step, schedule=ct.Schedule(1e-3, 4),
                            save=lambda step: None, save_every=100, is_main=True, log_path=None, progress=False, batch_size=8)
    assert resumed.startup == 1.0 and resumed.samples == 16  # a resumed run's first batch is its start


def test_the_float_path_names_the_cpu_the_kernels_and_the_threads(tmp_path):
    """What a learned figure depends on beyond its seed: forcing other kernels (ATEN_CPU_CAPABILITY)
    or threads in a fresh process shows in float_path(), and the CPU's name comes from cpuinfo."""
    import json
    import subprocess
    import sys

    from vlmtool.core.runtime import cpu_model

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu avx2\n")
    assert cpu_model(str(info)) == "AMD EPYC 7B13"
    assert cpu_model(str(tmp_path / "missing"))  # no cpuinfo: what platform says, never empty
    code = "import json; from vlmtool.core.runtime import float_path; print(json.dumps(float_path()))"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "VLMTOOL_THREADS", "ATEN_CPU_CAPABILITY")}
    forced = json.loads(subprocess.run([sys.executable, "-c", "import torch; torch.set_num_threads(1); " + code],
                                       env={**env, "ATEN_CPU_CAPABILITY": "default"}, capture_output=True, text=True, check=True).stdout)
    assert forced["kernels"] == "DEFAULT" and forced["threads"] == 1 and forced["torch"] and forced["cpu"]
    native = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)
    assert native["cpu"] == cpu_model() and native["threads"] >= 1
