"""`vlmtool eval`: the pinned --json shape, the report folder, several checkpoints side by side,
the cost columns read from a checkpoint folder, and usage errors without a traceback."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli
from test_eval import Always, Truthful, _coco_style, _extract
from typer.testing import CliRunner

from vlmtool.evals import build_probes
from vlmtool.evals.cost import model_cost
from vlmtool.evals.data import read_images


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from vlmtool.world import make_world

    out = tmp_path_factory.mktemp("evalcli")
    make_world(out, samples=24, shard_size=12, seed=6, sizes="small")
    return out


def _checkpoint(folder, connector="mlp", tower=None, extra=None, **cfg):
    """A checkpoint folder as far as eval reads it: config.json and checkpoint.json."""
    from vlmtool.vlm.config import VLMConfig

    folder.mkdir(parents=True, exist_ok=True)
    VLMConfig(connector=connector, **cfg).to_json(folder / "config.json")
    (folder / "checkpoint.json").write_text(json.dumps({"format": "vlmtool-vlm", "version": 1, "tower": tower, "extra": extra or {}}))
    return folder


@pytest.fixture()
def fake_models(monkeypatch, world):
    """--checkpoint DIR answers with Truthful when DIR's name starts with 'good', else always yes."""
    images = read_images([str(world)], progress=False).images

    def load(checkpoint, device):
        return Truthful(images) if checkpoint.rstrip("/").rsplit("/", 1)[-1].startswith("good") else Always("Yes")

    monkeypatch.setattr("vlmtool.evals.run.load_answerer", load)
    return images


def _invoke(*args):
    from vlmtool.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_pinned_json_for_an_official_questions_file(world, fake_models, tmp_path):
    path = _coco_style(tmp_path, build_probes(fake_models, settings=("random",))["random"])
    root = tmp_path / "val"
    _extract(fake_models, root)
    ck = _checkpoint(tmp_path / "good")
    r = _invoke("eval", "pope", "--checkpoint", ck, "--questions", path, "--image-root", root, "--json", "--no-progress")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    m = summary["pope"]["coco_pope_random"]
    assert {k: m[k] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")} == \
        {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "yes_ratio": 0.5}
    assert summary["blind"]["coco_pope_random"]["yes_ratio"] == 1.0 and summary["checkpoint"] == str(ck)
    assert "coco_pope_random" in r.stderr and "blind_f1" in r.stderr  # the table for people


def test_all_writes_the_report_folder(world, fake_models, tmp_path):
    ck = _checkpoint(tmp_path / "good", tower={"image_size": 224, "patch_size": 16}, extra={"train_seconds": 12.5})
    out = tmp_path / "report"
    r = _invoke("eval", "all", world, "--checkpoint", ck, "--out", out, "--json", "--no-progress", "--chair-images", "5")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert set(s["pope"]) == set(s["blind"]) == {"random", "popular", "adversarial"}
    assert s["swap"]["flip_rate"] == 1.0 and s["chair"]["chair_s"] == 0.0 and s["chair"]["descriptions"] == 5
    assert json.loads((out / "report.json").read_text())["pope"] == s["pope"]
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(x) for x in (out / "questions" / "pope_adversarial.jsonl").read_text().splitlines()]
    assert rows and set(rows[0]) == {"question_id", "image", "text", "label"} and rows[0]["image"].endswith(".jpg")
    assert s["model"]["visual_tokens"] == 196 and s["model"]["train_seconds"] == 12.5


def test_several_checkpoints_side_by_side(world, fake_models, tmp_path):
    good = _checkpoint(tmp_path / "good", tower={"tokens": 49})
    prior = _checkpoint(tmp_path / "prior", connector="native", image_size=64, patch_size=16)
    out = tmp_path / "cmp"
    r = _invoke("eval", "pope", world, "-c", good, "-c", prior, "--json", "--no-progress", "--out", out)
    assert r.exit_code == 0, r.output
    table = {row["checkpoint"]: row for row in json.loads(r.stdout)["table"]}
    assert table["0-good"]["f1.adversarial"] == 1.0 and table["1-prior"]["f1.adversarial"] == pytest.approx(2 / 3, abs=1e-6)
    assert table["0-good"]["visual_tokens"] == 49 and table["1-prior"]["visual_tokens"] == 4 * 4 + 4
    assert table["1-prior"]["connector"] == "native" and table["0-good"]["train_seconds"] is None
    assert (out / "report.png").exists() and (out / "0-good" / "report.json").exists() and (out / "1-prior" / "report.json").exists()


def test_compared_checkpoints_write_only_under_out(world, fake_models, tmp_path):
    """`-c DIR/..`, `-c .` and the same folder twice: each gets its own folder, inside --out, and
    no checkpoint's own files are touched."""
    import os

    good = _checkpoint(tmp_path / "ck" / "good", tower={"tokens": 49})
    out = tmp_path / "cmp"
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "ck").rglob("*")}
    cwd = os.getcwd()
    os.chdir(good)
    try:
        r = _invoke("eval", "pope", world, "-c", good / "..", "-c", ".", "-c", good, "--no-progress", "--out", out)
    finally:
        os.chdir(cwd)
    names = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name != "questions")
    assert names == ["0-ck", "1-good", "2-good"], (names, r.output)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "ck").rglob("*")} == before
    assert not (tmp_path / "report.json").exists() and not (tmp_path / "ck" / "report.json").exists()


def test_kv_bytes_per_connector(tmp_path):
    mlp = model_cost(_checkpoint(tmp_path / "m", tower={"image_size": 224, "patch_size": 14, "cls": True}))
    assert mlp["visual_tokens"] == 257 and mlp["kv_cache_bytes"] == 2 * 4 * 2 * 64 * 2 * 257  # layers, kv heads, head dim, bf16
    x = model_cost(_checkpoint(tmp_path / "x", connector="xattn", xattn_every=2, tower={"tokens": 100}))
    assert x["visual_tokens"] == 0 and x["kv_cache_bytes"] == 2 * 2 * 4 * 64 * 2 * 100  # 2 cross-attention layers, all heads
    unknown = model_cost(_checkpoint(tmp_path / "u"))
    assert unknown["visual_tokens"] is None and unknown["kv_cache_bytes"] is None


@pytest.mark.parametrize("args, message", [
    (["eval", "pope", "--checkpoint", "/nonexistent/ckpt", "WORLD"], "checkpoint /nonexistent/ckpt: no such folder"),
    (["eval", "pope", "WORLD"], "give the model to evaluate: --checkpoint DIR"),
    (["eval", "pope", "WORLD", "--questions-only", "--out", "OUT", "--settings", "random,sideways"], "unknown task or setting sideways"),
    (["eval", "pope", "WORLD", "--questions-only", "--out", "OUT", "--objects-field", "things", "--no-progress"], "no sample has object metadata: give --objects-field"),
])
def test_usage_errors_are_one_line(world, tmp_path, args, message):
    p = run_cli(*[{"WORLD": str(world), "OUT": str(tmp_path / "out")}.get(a, a) for a in args], check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"vlmtool: error: {message}")


def test_questions_only_writes_pope_files_without_a_model(world, tmp_path):
    p = run_cli("eval", "pope", world, "--questions-only", "--out", tmp_path / "q", "--json", "--no-progress")
    s = json.loads(p.stdout)
    assert set(s["questions"]) == {"random", "popular", "adversarial"}
    rows = [json.loads(x) for x in (tmp_path / "q" / "questions" / "pope_popular.jsonl").read_text().splitlines()]
    assert len(rows) == s["probes"]["popular"] and {r["label"] for r in rows} == {"yes", "no"}
    assert sum(r["label"] == "yes" for r in rows) * 2 == len(rows)


def test_a_checkpoint_is_loaded_through_the_inference_api(monkeypatch, tmp_path):
    import sys
    import types

    from vlmtool.errors import UsageError
    from vlmtool.evals.run import resolve_answerer

    ck = _checkpoint(tmp_path / "ck")
    infer = types.ModuleType("vlmtool.vlm.infer")
    infer.load_answerer = lambda checkpoint, device: ("loaded", checkpoint, device)
    monkeypatch.setitem(sys.modules, "vlmtool.vlm.infer", infer)
    assert resolve_answerer(str(ck), "cpu") == (("loaded", str(ck), "cpu"), str(ck))
    monkeypatch.setitem(sys.modules, "vlmtool.vlm.infer", None)  # an install without it
    with pytest.raises(UsageError, match="needs the inference API"):
        resolve_answerer(str(ck))
