"""`vlmtool train`: what each stage trains, exact resume after a stop or a SIGKILL, 2-rank DDP
against one process, and bad input as one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train_data import make_features, make_instructions, one_thread, tiny_opts  # noqa: F401 (one_thread: autouse)

from vlmtool.vlm.train import run_train

ROOT = Path(__file__).resolve().parent.parent


def weights(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def cli(*args) -> tuple[int, str]:
    """`vlmtool ARGS` through the real entry point, in this process: (exit code, stderr)."""
    import contextlib
    import io

    from vlmtool.cli import main

    err = io.StringIO()
    argv, sys.argv = sys.argv, ["vlmtool", *map(str, args)]
    try:
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
            main()
    finally:
        sys.argv = argv
    return int(e.value.code or 0), err.getvalue()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    feats = make_features(root / "feats")
    return feats, make_instructions(root / "instructions.jsonl", feats, extra_unjoined=2)


def test_stage1_trains_only_the_connector_and_stage2_the_lm(data, tmp_path):
    from vlmtool.vlm.checkpoint import load_checkpoint

    feats, ins = data
    s0 = run_train([str(feats)], str(tmp_path / "s0"), tiny_opts(stage=0, instructions=str(ins), steps=2))
    assert s0["complete"] and (tmp_path / "s0" / "tokenizer.json").exists()
    run_train([str(feats)], str(tmp_path / "s1"), tiny_opts(stage=1, init=str(tmp_path / "s0"), steps=3))
    s2 = run_train([str(feats)], str(tmp_path / "s2"), tiny_opts(stage=2, init=str(tmp_path / "s1"), instructions=str(ins),
                                                                    steps=3, text_mix=0.3))
    w0, w1, w2 = (weights(tmp_path / s) for s in ("s0", "s1", "s2"))
    lm = [k for k in w0 if k.startswith("lm.")]
    assert lm and all(torch.equal(w0[k], w1[k]) for k in lm)  # stage 1: the LM bit-identical
    fresh = load_checkpoint(tmp_path / "s0").model
    torch.manual_seed(0)
    fresh.replace_connector(connector="mlp", d_vision=32)  # the connector stage 1 started from
    start = {k: v for k, v in fresh.state_dict().items() if k.startswith("connector.")}
    moved = [k for k, v in start.items() if v.dim() == 2]
    assert moved and all(not torch.equal(start[k], w1[k]) for k in moved)
    assert any(not torch.equal(w1[k], w2[k]) for k in lm)  # stage 2: the LM moves
    assert s2["instruction_unjoined"] == 2 and s2["val_samples"] == 2
    assert s2["val_loss"] is not None and s2["val_text_loss"] is not None
    ck = load_checkpoint(tmp_path / "s2")
    assert ck.extra["stage"] == 2 and ck.tower["width"] == 32
    assert (tmp_path / "s2" / "loss.png").stat().st_size > 0


class _Clock:
    """A clock that moves 5 s a reading: the training time a run records is then a count of
    readings, the same on any machine under any load."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 5.0
        return self.now


def test_a_stopped_run_resumes_to_the_same_weights(data, tmp_path, monkeypatch):
    import vlmtool.vlm.train as vlm_train

    feats, ins = data
    opts = {"stage": 2, "instructions": str(ins), "steps": 6, "text_mix": 0.3, "save_every": 100}
    run_train([str(feats)], str(tmp_path / "straight"), tiny_opts(**opts))
    monkeypatch.setattr(vlm_train, "time", _Clock())  # the clock train_seconds is read from (start, then each save)
    first = run_train([str(feats)], str(tmp_path / "stopped"), tiny_opts(**opts, stop_at=3))
    assert first["steps"] == 3 and not first["complete"]
    assert json.loads((tmp_path / "stopped" / "checkpoint.json").read_text())["extra"]["train_seconds"] == 5.0  # one save
    # the earlier runs' time is carried in the training state: set it to a known figure, and the
    # resumed run adds its own (one save, 5 s of this clock) to it
    state_path = tmp_path / "stopped" / "train_state.pt"
    state = torch.load(state_path, weights_only=True)
    torch.save({**state, "train_seconds": 1000.0}, state_path)
    again = run_train([str(feats)], str(tmp_path / "stopped"), tiny_opts(**opts))
    assert again["steps"] == 6 and again["complete"]
    # the training time eval's cost table reports counts both runs
    from vlmtool.evals.cost import model_cost

    assert model_cost(tmp_path / "stopped")["train_seconds"] == 1005.0 == again["train_seconds"]
    done = run_train([str(feats)], str(tmp_path / "stopped"), tiny_opts(**opts))  # nothing left to train: the same total
    assert done["complete"] and done["train_seconds"] == 1005.0
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "stopped")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    steps = [r for r in (tmp_path / "stopped" / "train_log.jsonl").read_text().splitlines() if '"loss"' in r]
    assert len(steps) == 6  # every step logged once


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _train_args(feats, out, *extra):
    return [sys.executable, "-m", "vlmtool", "train", str(feats), "--out", str(out), "--d-model", "32", "--n-layers", "2",
            "--vocab-size", "300", "--max-seq", "128", "--workers", "0", "--no-progress", "--device", "cpu", "--val-samples", "2",
            "--warmup", "0", *map(str, extra)]


@pytest.mark.slow
def test_a_sigkilled_run_resumes_to_the_same_weights(data, tmp_path):
    feats, ins = data
    common = ["--stage", "2", "--instructions", ins, "--steps", "40", "--batch-size", "4", "--save-every", "3",
              "--text-mix", "0.3", "--shuffle-buffer", "8"]
    out = tmp_path / "killed"
    p = subprocess.Popen(_train_args(feats, out, *common), env=_env(), stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (out / "checkpoint.json").exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert 0 < state["step"] < 40  # killed mid-run, after a checkpoint
    r = subprocess.run(_train_args(feats, out, *common, "--json"), env=_env(), capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    run_train([str(feats)], str(tmp_path / "straight"), tiny_opts(stage=2, instructions=str(ins), steps=40, save_every=3,
                                                                    text_mix=0.3))
    a, b = weights(tmp_path / "straight"), weights(out)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


@pytest.mark.slow
def test_two_rank_ddp_matches_one_process_with_the_global_batch(tmp_path):
    # one sample per shard-epoch step: rank r's batch is its whole shard, one process's batch is both shards
    feats = make_features(tmp_path / "f", shards=2, per_shard=3)
    common = ["--stage", "1", "--steps", "3", "--save-every", "10", "--shuffle-buffer", "1", "--lr", "0.01"]
    run_train([str(feats)], str(tmp_path / "one"), tiny_opts(stage=1, steps=3, save_every=10, shuffle_buffer=1, lr=0.01, batch_size=6))
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29561",
                          *_train_args(feats, tmp_path / "two", *common, "--batch-size", "3")[1:]],
                         env=_env(), capture_output=True, text=True, timeout=600, check=False)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    changed = [k for k in a if k.startswith("connector.") and a[k].dim() == 2]
    assert changed and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_bad_input_is_one_line_and_exit_2(data, tmp_path):
    feats, _ = data
    narrow = make_features(tmp_path / "narrow", shards=1, per_shard=4, width=16)
    code, err = cli("train", narrow, "--stage", "1", "--init", tmp_path / "nope", "--out", tmp_path / "o", "--no-progress")
    assert code == 2 and "no such folder" in err and "Traceback" not in err
    run_train([str(feats)], str(tmp_path / "s1"), tiny_opts(stage=1, steps=1))
    code, err = cli("train", narrow, "--stage", "1", "--init", tmp_path / "s1", "--out", tmp_path / "o2", "--no-progress", "--workers", "0")
    assert code == 2 and "width 16" in err and len(err.strip().splitlines()) == 1


def test_native_connector_trains_on_image_shards_and_answers(tmp_path):
    from PIL import Image

    from vlmtool.core.records import Reject, iter_samples
    from vlmtool.core.shards import expand_inputs, shard_refs
    from vlmtool.vlm.infer import load_answerer
    from vlmtool.world import make_world

    make_world(tmp_path / "w", samples=12, shard_size=6, seed=0, sizes="small")
    rows = [{"shard": str(ref.url), "key": s.key, "conversations": [{"from": "human", "value": "<image>\nWhat is shown?"},
                                                                     {"from": "gpt", "value": s.caption}]}
            for ref in shard_refs(expand_inputs([str(tmp_path / "w")])) for s in iter_samples(ref) if not isinstance(s, Reject)]
    (tmp_path / "ins.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    native = {"connector": "native", "image_size": 32, "patch_size": 8}
    s1 = run_train([str(tmp_path / "w")], str(tmp_path / "n1"), tiny_opts(stage=1, steps=2, **native))
    s2 = run_train([str(tmp_path / "w")], str(tmp_path / "n2"), tiny_opts(stage=2, steps=2, init=str(tmp_path / "n1"),
                                                                            instructions=str(tmp_path / "ins.jsonl"), text_mix=0.5, **native))
    assert s1["connector"] == s2["connector"] == "native" and s2["instruction_joined"] == 12
    w1, w2 = weights(tmp_path / "n1"), weights(tmp_path / "n2")
    assert all(not torch.equal(w1[k], w2[k]) for k in ("connector.proj.weight", "connector.proj.bias"))
    answers = load_answerer(tmp_path / "n2", "cpu").answer([Image.new("RGB", (40, 30), (200, 0, 0))] * 2, ["What is shown?"] * 2,
                                                           max_new_tokens=4)
    assert len(answers) == 2 and answers[0] == answers[1]


def test_xattn_stage1_trains_the_gated_blocks_only(data, tmp_path):
    feats, _ = data
    s = run_train([str(feats)], str(tmp_path / "x0"), tiny_opts(stage=0, steps=1))
    run_train([str(feats)], str(tmp_path / "x1"), tiny_opts(stage=1, steps=2, connector="xattn", init=str(tmp_path / "x0")))
    w0, w1 = weights(tmp_path / "x0"), weights(tmp_path / "x1")
    assert s["complete"] and all(torch.equal(w0[k], w1[k]) for k in w0 if k.startswith("lm."))
    gates = [k for k in w1 if k.startswith("connector.") and "gate" in k]
    assert gates and all(float(w1[k].abs().max()) > 0 for k in gates)  # the tanh gates open from 0
