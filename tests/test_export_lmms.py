"""lmms-eval runs a checkpoint through vlmtool's plugin model (`--model vlmtool`): on a local
POPE-format task it gives the answers, accuracy and F1 that `vlmtool eval pope --questions` gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import FIXTURES, json_out, run_cli
from test_train_data import _row, make_tower_features, one_thread, tiny_opts  # noqa: F401 (one_thread: autouse)

pytest.importorskip("lmms_eval", reason="lmms-eval is in the lmms extra: pip install 'vlmtool[lmms]'")

TASK = """\
task: pope_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {questions}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: label
generation_kwargs:
  max_new_tokens: 8
  temperature: 0
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: pope_accuracy
    aggregation: !function utils.accuracy
    higher_is_better: true
  - metric: pope_f1_score
    aggregation: !function utils.f1
    higher_is_better: true
"""

# POPE's own answer rule (RUCAIBox/POPE evaluate.py): the first sentence, commas dropped, "no" when
# the word no or not occurs; lmms-eval's bundled pope task instead wants the answer to be exactly yes or no
UTILS = """\
import re
from PIL import Image

ROOT = {root!r}


def doc_to_visual(doc):
    return [Image.open(ROOT + "/" + doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["text"]


def process_results(doc, results):
    words = re.findall(r"[a-z']+", results[0].split(".", 1)[0].replace(",", "").lower())
    pred = "no" if ("no" in words or "not" in words) else "yes"
    row = {{"pred": pred, "label": doc["label"]}}
    return {{"pope_accuracy": row, "pope_f1_score": row}}


def accuracy(rows):
    return sum(r["pred"] == r["label"] for r in rows) / len(rows)


def f1(rows):
    tp = sum(r["pred"] == r["label"] == "yes" for r in rows)
    fp = sum(r["pred"] == "yes" != r["label"] for r in rows)
    fn = sum(r["pred"] == "no" != r["label"] for r in rows)
    p, r = tp / (tp + fp) if tp + fp else 0.0, tp / (tp + fn) if tp + fn else 0.0
    return 2 * p * r / (p + r) if p + r else 0.0
"""


PRIOR = (("red cube", "Yes."), ("ball", "No."), ("star", "No, there is not."))


def yes_no_checkpoint(root):
    """A tiny checkpoint taught answers by the question alone (the features here are random), so
    its POPE answers are yes for one object and no for two: metrics with something in them."""
    from vlmtool import features
    from vlmtool.vlm.train import run_train

    feats = make_tower_features(root / "feats")
    rows = [_row(s["meta"]["source"]["shard"], s["key"], f"Is there a {obj} in the image?", ans, "conversations")
            for s in features.read(features.feature_shards([str(feats)])) for obj, ans in PRIOR]
    (root / "ins.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_train([str(feats)], str(root / "ck"), tiny_opts(stage=2, instructions=str(root / "ins.jsonl"), steps=150, lr=1e-2, save_every=150))
    return root / "ck"


def _questions(root):
    from vlmtool.core.records import Reject, iter_samples
    from vlmtool.core.shards import expand_inputs, shard_refs

    (root / "images").mkdir(parents=True)
    rows = []
    for ref in shard_refs(expand_inputs([str(FIXTURES / "shapes")])):
        for s in iter_samples(ref):
            if isinstance(s, Reject) or len(rows) >= 12:
                continue
            try:
                s.load_image().convert("RGB").save(root / "images" / f"{s.key}.png")
            except Exception:  # noqa: BLE001 -- the fixture's broken samples
                continue
            for (obj, _), label in zip(PRIOR, ("yes", "no", "yes")):
                rows.append({"question_id": len(rows), "image": f"{s.key}.png", "text": f"Is there a {obj} in the image?", "label": label})
    (root / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "q.jsonl", rows


@pytest.mark.slow  # lmms-eval's start-up imports and a subprocess: ~25 s
def test_lmms_eval_gives_vlmtools_pope_answers_accuracy_and_f1(tmp_path):
    ck = yes_no_checkpoint(tmp_path / "train")
    questions, rows = _questions(tmp_path / "pope")
    ours = json_out(run_cli("eval", "pope", "-c", ck, "--questions", questions, "--image-root", tmp_path / "pope" / "images",
                            "--no-blind", "--json", "--no-progress", "--device", "cpu", "--max-new-tokens", "8", "--out", tmp_path / "ev"))
    m = ours["pope"]["q"]
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "pope_local.yaml").write_text(TASK.format(questions=questions))
    (tasks / "utils.py").write_text(textwrap.dedent(UTILS.format(root=str(tmp_path / "pope" / "images"))))
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "lmms_eval", "--model", "vlmtool", "--model_args", f"checkpoint={ck},device=cpu",
                        "--tasks", "pope_local", "--include_path", str(tasks), "--batch_size", "4", "--output_path", str(tmp_path / "lm"),
                        "--log_samples"], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    results = [json.loads(f.read_text()) for f in (tmp_path / "lm").rglob("*results.json")]
    got = results[0]["results"]["pope_local"]
    assert got["pope_accuracy,none"] == pytest.approx(m["accuracy"], abs=1e-6) and got["pope_f1_score,none"] == pytest.approx(m["f1"], abs=1e-6)
    samples = [json.loads(x) for f in (tmp_path / "lm").rglob("*samples_pope_local*.jsonl") for x in f.read_text().splitlines()]
    theirs = {s["doc_id"]: s["filtered_resps"] for s in samples}
    from PIL import Image

    from vlmtool.evals.metrics import parse_yes_no
    from vlmtool.vlm.infer import load_answerer

    images = [Image.open(tmp_path / "pope" / "images" / r["image"]).convert("RGB") for r in rows]
    want = load_answerer(ck, "cpu").answer(images, [r["text"] for r in rows], max_new_tokens=8)
    assert [theirs[i] for i in range(len(rows))] == want  # the same answer to every question
    assert {parse_yes_no(a) for a in want} == {"yes", "no"} and 0 < m["f1"] < 1  # answers with something in them
