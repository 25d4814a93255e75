"""Checkpoint folders: identical logits after a round trip, one-line errors for broken folders."""

import json

import pytest
import torch

from vlmtool.errors import UsageError
from vlmtool.vlm.checkpoint import load_checkpoint, save_checkpoint
from vlmtool.vlm.model import new_model
from vlmtool.vlm.tiny import tiny_config, tiny_tokenizer
from vlmtool.vlm.tokenizer import collate

TOWER = {"model": "tiny-clip", "pretrained": "clip/", "layer": -2, "width": 32}


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def inputs(model, tok):
    torch.manual_seed(7)
    if model.config.connector == "native":
        n, nl = model.native_layout(16, 16)
    else:
        n, nl = model.slot_count(4), []
    enc = tok.encode_chat([("What colour is it?", "Red.")], n_visual=n, newline_after=nl)
    return {**collate([enc], tok.pad_id), "visual": torch.randn(1, 4, 32),
            "pixels": torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)}


@pytest.mark.parametrize("connector, tie", [("mlp", True), ("xattn", False), ("native", True)])
def test_round_trip_gives_identical_logits_and_tokens(tok, tmp_path, connector, tie):
    torch.manual_seed(0)
    model, _ = new_model(tiny_config(connector=connector, tie_embeddings=tie), tok)
    model.eval()
    if connector == "xattn":  # make the connector matter
        for block in model.connector.blocks:
            torch.nn.init.constant_(block.attn_gate, 0.7)
    save_checkpoint(tmp_path / "ck", model, tok, tower=TOWER, extra={"stage": 2, "step": 10})
    ck = load_checkpoint(tmp_path / "ck")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["checkpoint.json", "config.json", "model.safetensors",
                                                                    "tokenizer.json"]
    assert ck.tower == TOWER and ck.extra == {"stage": 2, "step": 10} and ck.config == model.config
    b = inputs(model, tok)
    with torch.no_grad():
        assert torch.equal(ck.model(**b).logits, model(**b).logits)
    prompt = b["input_ids"][:, :-3]
    kw = {"visual": b["visual"], "pixels": b["pixels"], "max_new_tokens": 6}
    assert ck.model.generate(prompt, **kw) == model.generate(prompt, **kw)
    # saving again over the same folder replaces it in place
    save_checkpoint(tmp_path / "ck", ck.model, ck.tokenizer, tower=None)
    assert load_checkpoint(tmp_path / "ck").tower is None


def one_line_error(folder, match):
    with pytest.raises(UsageError, match=match) as e:
        load_checkpoint(folder)
    assert "\n" not in str(e.value)


def test_missing_folder_and_files_are_one_line_errors(tok, tmp_path):
    one_line_error(tmp_path / "nope", "no such folder")
    model, _ = new_model(tiny_config(), tok)
    for name, match in (("model.safetensors", "model.safetensors is missing"),
                        ("checkpoint.json", "interrupted save"), ("tokenizer.json", "tokenizer.json does not exist")):
        folder = save_checkpoint(tmp_path / name, model, tok)
        (folder / name).unlink()
        one_line_error(folder, match)


def test_garbage_and_mismatched_files_are_one_line_errors(tok, tmp_path):
    model, _ = new_model(tiny_config(), tok)
    folder = save_checkpoint(tmp_path / "a", model, tok)
    (folder / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    one_line_error(folder, "cannot be read")

    folder = save_checkpoint(tmp_path / "b", model, tok)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "d_model": 128}))
    one_line_error(folder, "does not match config.json")

    (folder / "config.json").write_text(json.dumps({**cfg, "connector": "xattn"}))
    one_line_error(folder, "does not match config.json")

    (folder / "config.json").write_text("{oops")
    one_line_error(folder, "not valid JSON")

    # fields that shape no tensor: heads (with kv heads to match), rope_theta, norm_eps
    folder = save_checkpoint(tmp_path / "e", model, tok)
    for edit in ({"rope_theta": cfg["rope_theta"] * 2}, {"n_heads": cfg["n_heads"] * 2, "n_kv_heads": cfg["n_kv_heads"] * 2},
                 {"norm_eps": 1e-3}):
        (folder / "config.json").write_text(json.dumps({**cfg, **edit}))
        one_line_error(folder, "changed after the weights were saved")
    (folder / "config.json").write_text(json.dumps(cfg, indent=4))  # the same values, laid out anew: loads
    assert load_checkpoint(folder).config == model.config

    folder = save_checkpoint(tmp_path / "c", model, tok)
    (folder / "checkpoint.json").write_text(json.dumps({"format": "something-else"}))
    one_line_error(folder, "not a vlmtool VLM checkpoint")


def test_weights_are_plain_safetensors(tok, tmp_path):
    from safetensors.torch import load_file

    model, _ = new_model(tiny_config(), tok)
    folder = save_checkpoint(tmp_path / "ck", model, tok)
    tensors = load_file(folder / "model.safetensors")
    assert "connector.fc1.weight" in tensors and "lm.tok_emb.weight" in tensors
    assert all(torch.equal(tensors[k], v) for k, v in model.state_dict().items() if k in tensors)
