"""`vlmtool synth --teacher local:DIR`: a trained checkpoint as the teacher, its requests answered
in batches, every request's result kept exactly once (through a kill), tokens and speed reported."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import orjson
import pytest
from conftest import json_out, run_cli
from test_export_model import train_checkpoint
from test_train_data import one_thread  # noqa: F401 (autouse)

from vlmtool.world import make_world


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return train_checkpoint(tmp_path_factory.mktemp("local-teacher"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("local-world")
    make_world(out, samples=24, shard_size=8, seed=5, sizes="small", broken=0.1)
    return out


def _requests(world, n):
    from vlmtool.core.records import Reject, iter_samples
    from vlmtool.core.shards import expand_inputs, shard_refs
    from vlmtool.synth.tasks import Request

    out = []
    for ref in shard_refs(expand_inputs([str(world)])):
        for s in iter_samples(ref):
            if not isinstance(s, Reject) and len(out) < n:
                q = "Is there a ball in the image?" if len(out) % 2 else None
                out.append(Request(key=f"k{len(out)}", sample_key=s.key, shard=ref.name, shard_url=ref.url, task="negative" if q else "detail",
                                   prompt="p", system="", image_bytes=s.image_bytes, image_ext=s.image_ext, caption=s.caption, question=q))
    return out


def test_requests_in_flight_are_answered_in_batches_with_the_same_answers(ckpt, world):
    from vlmtool.synth.teachers import LocalTeacher

    reqs = _requests(world, 6)
    teacher = LocalTeacher(ckpt, "cpu", max_new_tokens=8, batch_size=4)
    sizes, real = [], teacher.answerer.model.generate
    teacher.answerer.model.generate = lambda input_ids, **kw: sizes.append(len(input_ids)) or real(input_ids, **kw)

    async def together():
        return await asyncio.gather(*(teacher.generate(r) for r in reqs))

    batched = asyncio.run(together())
    assert sizes == [4, 2]  # six requests in flight: a batch of four, then two

    async def alone():
        return [await teacher.generate(r) for r in reqs]

    assert [r.turns for r in asyncio.run(alone())] == [r.turns for r in batched] and sizes[2:] == [1] * 6
    assert all(r.failed is None and r.prompt_tokens > 64 and 0 < r.completion_tokens <= 8 for r in batched)  # 64 visual slots


@pytest.mark.slow  # a CLI process that loads the model and answers ~70 requests: ~11 s
def test_synth_with_a_local_teacher_reports_tokens_and_speed(ckpt, world, tmp_path):
    s = json_out(run_cli("synth", world, "--out", tmp_path / "o", "--teacher", f"local:{ckpt}", "--max-tokens", "8",
                         "--concurrency", "4", "--device", "cpu", "--json", "--no-progress", "--max-failed", "1"))
    log = [orjson.loads(x) for p in (tmp_path / "o" / "log").glob("*.jsonl") for x in p.read_bytes().splitlines()]
    assert s["complete"] and s["requests"] == len(log) == len({r["id"] for r in log}) > 0
    assert {r["teacher"] for r in log} == {"local"} and all(r["status"] != "failed" for r in log)
    assert s["prompt_tokens"] > 64 * len(log) and s["completion_tokens"] > 0
    assert s["this_run"]["requests_per_s"] > 0 and s["this_run"]["completion_tokens_per_s"] > 0


def test_a_local_teacher_that_is_not_a_checkpoint_is_one_line(tmp_path, world):
    p = run_cli("synth", world, "--out", tmp_path / "o", "--teacher", f"local:{tmp_path}", check=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "not a checkpoint folder" in p.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # two CLI processes, model loads and a kill: ~30 s on 2 busy cores
def test_sigkill_then_rerun_every_request_once(ckpt, world, tmp_path):
    out = tmp_path / "o"
    args = [world, "--out", out, "--teacher", f"local:{ckpt}", "--max-tokens", "24", "--concurrency", "2", "--device", "cpu",
            "--no-progress", "--max-failed", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "vlmtool", "synth", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline:
        logs = list((out / "log").glob("*.jsonl")) if (out / "log").exists() else []
        if logs and logs[0].read_bytes().count(b"\n") >= 10:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    written = [orjson.loads(x)["id"] for p in (out / "log").glob("*.jsonl") for x in p.read_bytes().splitlines() if x.endswith(b"}")]
    assert len(written) >= 10 and not (out / "instructions.jsonl").exists()
    s = json_out(run_cli("synth", *args, "--json"))
    log = [orjson.loads(x) for p in (out / "log").glob("*.jsonl") for x in p.read_bytes().splitlines() if x.endswith(b"}")]
    ids = [r["id"] for r in log]
    assert len(ids) == len(set(ids)) == s["requests"] > len(written)  # nothing written before the kill was asked again
    rows = [orjson.loads(x) for x in (out / "instructions.jsonl").read_bytes().splitlines()]
    assert len(rows) == len({r["id"] for r in rows}) == s["instructions"]
