"""The hf path: a tiny random transformers Llama from a local folder trains stage 1 (its weights
untouched) and stage 2 (its weights moved) and answers through `vlmtool infer`."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from test_train import cli, weights
from test_train_data import (  # noqa: F401 (one_thread: autouse)
    make_instructions,
    make_tower_features,
    one_thread,
    tiny_opts,
)

pytest.importorskip("transformers")


def test_tiny_llama_trains_stage_1_and_2_and_answers(tmp_path, capsys):
    from vlmtool.vlm.tiny import save_tiny_llama
    from vlmtool.vlm.train import run_train

    llama = save_tiny_llama(tmp_path / "llama")
    feats = make_tower_features(tmp_path / "feats")
    ins = make_instructions(tmp_path / "ins.jsonl", feats)
    s1 = run_train([str(feats)], str(tmp_path / "s1"), tiny_opts(stage=1, lm=f"hf:{llama}", steps=2))
    s2 = run_train([str(feats)], str(tmp_path / "s2"), tiny_opts(stage=2, init=str(tmp_path / "s1"), instructions=str(ins), steps=2))
    assert s1["lm"] == s2["lm"] == f"hf:{llama}"
    from safetensors.torch import load_file

    base = load_file(str(llama / "model.safetensors"))
    w1, w2 = weights(tmp_path / "s1"), weights(tmp_path / "s2")
    lm1 = {k.removeprefix("lm.model."): v for k, v in w1.items() if k.startswith("lm.")}
    assert lm1.keys() == base.keys() and all(torch.equal(lm1[k], base[k]) for k in base)  # stage 1: the Llama untouched
    assert any(not torch.equal(w1["lm.model." + k], w2["lm.model." + k]) for k in base)  # stage 2: it moves
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "red.png")
    code, err = cli("infer", "-c", tmp_path / "s2", "--image", tmp_path / "red.png", "-q", "What colour is the cube?",
                    "--json", "--max-new-tokens", "6", "--device", "cpu")
    assert code == 0, err
    row = json.loads(capsys.readouterr().out)
    assert isinstance(row["answer"], str) and row["question"] == "What colour is the cube?"
