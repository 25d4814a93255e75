"""Hostile input and unlucky users, job by job: names are data, counts are exact with and without
loader workers, a bad input is one line, the job folder is one job at a time."""

import os
import pickle
import subprocess
import sys
import time

import orjson
import pytest

from conftest import FIXTURES, json_out, run_cli
from vlmtool.world import make_faults


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile") / "corpus"
    make_faults(out)
    return out, orjson.loads((out / "faults.json").read_bytes())


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny CLIP saved as a clip-train folder (one step: the weights only need to be fixed)."""
    out = tmp_path_factory.mktemp("tiny") / "clip"
    run_cli("clip-train", FIXTURES / "shapes", "--out", out, "--steps", "1", "--batch-size", "8", "--workers", "0", "--no-progress")
    return out


@pytest.mark.slow  # several CLI processes
def test_filter_over_the_hostile_corpus_counts_every_fault_and_the_same_with_workers(corpus, tiny_model, tmp_path, monkeypatch):
    out, truth = corpus
    monkeypatch.chdir(tmp_path)  # where a shell run by a shard's name would write
    runs = {}
    for w in (0, 2):
        s = json_out(run_cli("filter", out, "--out", tmp_path / f"w{w}", "--pretrained", tiny_model, "--min-score", "0",
                             "--workers", w, "--json", "--no-progress"))
        assert s["complete"] and (s["samples"], s["ok"], s["rejected"]) == (
            truth["totals"]["samples"], truth["totals"]["ok"], truth["totals"]["rejected"])
        runs[w] = (tmp_path / f"w{w}" / "scores.jsonl").read_bytes()
    assert runs[0] == runs[2]  # statistics and rows identical with loader workers
    assert len(runs[0].splitlines()) == truth["totals"]["samples"]  # every record has its row
    assert not list(tmp_path.rglob(truth["pwned_marker"])) and not list(out.parent.rglob(truth["pwned_marker"]))


def test_a_failing_pipe_and_an_unreachable_url_are_broken_tars_not_crashes(tmp_path):
    listing = "\n".join([str(FIXTURES / "shapes" / "00000.tar"), "pipe:exit 3", "http://127.0.0.1:9/none.tar"]) + "\n"
    s = json_out(run_cli("inspect", "-", "--out", tmp_path / "j", "--json", "--no-progress", "--workers", "0", input=listing))
    assert s["complete"] and s["shards"] == 3 and s["samples"] == 16 + 2
    assert s["rejected"].get("broken_tar") == 2


@pytest.mark.slow  # CLI runs and a CLIP training step
@pytest.mark.parametrize("content", [b"garbage" * 100, pickle.dumps({"state_dict": [1, 2, 3]})])
def test_a_garbage_or_pickled_pretrained_file_is_one_line(tmp_path, content):
    bad = tmp_path / "weights.pt"
    bad.write_bytes(content)
    p = run_cli("filter", FIXTURES / "shapes", "--out", tmp_path / "j", "--model", "tiny-clip", "--pretrained", bad,
                "--min-score", "0", check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_out_naming_a_file_is_one_line(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    p = run_cli("inspect", FIXTURES / "shapes", "--out", f, check=False)
    assert p.returncode == 2 and "is a file" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow  # several CLI processes
def test_two_jobs_on_one_folder_cannot_interleave(tmp_path):
    """The second launch on a busy folder is refused at once; after the first ends it resumes."""
    slow = "\n".join(f"pipe:sleep 1; cat {p}" for p in sorted((FIXTURES / "shapes").glob("*.tar"))) + "\n"
    first = subprocess.Popen([sys.executable, "-m", "vlmtool", "inspect", "-", "--out", str(tmp_path / "j"), "--no-progress",
                              "--workers", "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first.stdin.write(slow.encode())
    first.stdin.close()
    deadline = time.time() + 60
    while not (tmp_path / "j" / "_job.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    p = run_cli("inspect", "-", "--out", tmp_path / "j", "--no-progress", input=slow, check=False)
    assert p.returncode == 2 and "another vlmtool job" in p.stderr
    assert first.wait(timeout=120) == 0


def test_stale_temporary_files_are_removed_and_a_changed_setting_refused(tmp_path):
    job = tmp_path / "j"
    run_cli("inspect", FIXTURES / "shapes", "--out", job, "--no-progress")
    stale = job / "_done" / ".00000.json.r0.abc123.tmp"
    stale.write_bytes(b"half")
    run_cli("inspect", FIXTURES / "shapes", "--out", job, "--no-progress")
    assert not stale.exists()
    p = run_cli("inspect", FIXTURES / "shapes", "--out", job, "--max-pixels", "100", "--no-progress", check=False)
    assert p.returncode == 2 and "max_pixels" in p.stderr


def test_credentials_in_urls_are_never_stored():
    from vlmtool.core.job import redact

    assert redact("http://user:s3cret@host:8000/v1") == "http://***@host:8000/v1"
    assert redact(["pipe:curl https://tok@h/x.tar", {"u": "s3://k:v@b/p"}]) == ["pipe:curl https://***@h/x.tar", {"u": "s3://***@b/p"}]
    assert redact("a@b.com is not a url") == "a@b.com is not a url"
    assert redact("https://b.s3.amazonaws.com/x.tar?X-Amz-Credential=AK/1&X-Amz-Signature=abc&x=1") == \
        "https://b.s3.amazonaws.com/x.tar?X-Amz-Credential=***&X-Amz-Signature=***&x=1"


@pytest.mark.slow  # CLI runs and a CLIP training step
def test_identical_runs_give_identical_rejects(tmp_path):
    a = run_cli("inspect", FIXTURES / "shapes", "--out", tmp_path / "a", "--no-progress")
    b = run_cli("inspect", FIXTURES / "shapes", "--out", tmp_path / "b", "--no-progress")
    assert a.returncode == b.returncode == 0
    ra, rb = (tmp_path / "a" / "rejects.jsonl").read_bytes(), (tmp_path / "b" / "rejects.jsonl").read_bytes()
    assert ra == rb and b" at 0x" not in ra


@pytest.mark.slow  # CLI runs and a CLIP training step
def test_outputs_honour_the_umask(tmp_path, tiny_model):
    run_cli("inspect", FIXTURES / "shapes", "--out", tmp_path / "j", "--no-progress")
    for f in (tmp_path / "j" / "manifest.json", tiny_model / "model.safetensors"):  # safetensors replaces the file it writes
        assert os.stat(f).st_mode & 0o777 == 0o666 & ~_umask(), f


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m
