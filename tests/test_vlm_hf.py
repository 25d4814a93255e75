"""Any transformers causal LM as the VLM's LM: a tiny random Llama saved to a local folder."""

import sys

import pytest
import torch

pytest.importorskip("transformers")

from vlmtool.errors import UsageError
from vlmtool.vlm.checkpoint import load_checkpoint, save_checkpoint
from vlmtool.vlm.hf import HFTokenizer
from vlmtool.vlm.model import new_model
from vlmtool.vlm.tiny import save_tiny_llama, tiny_config
from vlmtool.vlm.tokenizer import IGNORE, collate

CHAT = [("<image>\nWhat colour is the cube?", "The cube is red."), ("And the ball?", "Blue.")]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def make(llama, connector="mlp"):
    torch.manual_seed(0)
    return new_model(tiny_config(lm=f"hf:{llama}", connector=connector))


def labelled(tok, enc):
    return tok.decode([t for t in enc.labels if t != IGNORE], skip_special=False)


def test_the_models_own_chat_template_labels_assistant_tokens_only(llama):
    _, tok = make(llama)
    assert tok.has_template
    enc = tok.encode_chat(CHAT, n_visual=4, newline_after=[1, 3])
    assert labelled(tok, enc) == "The cube is red.<|im_end|>Blue.<|im_end|>"
    assert tok.decode(enc.input_ids, skip_special=False).startswith(
        "<|im_start|>user\n<image><image><image_newline><image><image><image_newline>\nWhat colour")
    assert enc.input_ids.count(tok.image_id) == 4 and tok.image_id >= 348  # past the model's vocabulary
    assert tok.stop_ids == [tok.eos_id, tok.tok.convert_tokens_to_ids("<|im_end|>")]


def test_a_tokenizer_without_chat_template_gets_the_fallback(tmp_path):
    tok = HFTokenizer.load(save_tiny_llama(tmp_path / "plain", chat_template=None))
    enc = tok.encode_chat(CHAT[:1], n_visual=2)
    assert labelled(tok, enc) == "The cube is red.</s>"


@pytest.mark.parametrize("connector", ["mlp", "xattn"])
def test_forward_with_visual_slots_gives_a_loss_and_cached_generation_matches(llama, connector):
    model, tok = make(llama, connector)
    assert model.config.d_model == 64 and model.config.vocab_size == 348
    n = model.slot_count(4)
    batch = collate([tok.encode_chat(CHAT, n_visual=n), tok.encode_chat([("Hi", "Yes.")])], tok.pad_id)
    visual = torch.randn(2, 4, 32)
    mask = torch.tensor([[True] * 4, [False] * 4])
    model.freeze(2)
    out = model(**batch, visual=visual, visual_mask=mask)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.logits.shape == (*batch["input_ids"].shape, 348)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.connector.parameters())
    model.eval()
    prompts = collate([tok.encode_chat([("What colour is the cube?", None)], n_visual=n),
                       tok.encode_chat([("Is there a red cube above a blue ball?", None)], n_visual=n)], tok.pad_id, side="left")
    for sampling in ({}, {"temperature": 0.8, "top_p": 0.9, "seed": 2}):
        kw = {"visual": visual, "max_new_tokens": 10, **sampling}
        cached = model.generate(prompts["input_ids"], prompts["attention_mask"], **kw)
        assert cached == model.generate(prompts["input_ids"], prompts["attention_mask"], use_cache=False, **kw)
        assert all(len(t) == 10 for t in cached)


def test_the_hf_lm_keeps_the_last_logits_as_transformers_does(llama):
    model, tok = make(llama, "mlp")
    ids = torch.tensor([tok.encode_chat(CHAT, n_visual=0).input_ids])
    with torch.no_grad():
        full, _ = model.lm(model.lm.embed(ids))
        last, cache = model.lm(model.lm.embed(ids), use_cache=True, logits_to_keep=1)
    assert model.lm._keep_arg == "logits_to_keep" and cache is not None
    assert last.shape == (1, 1, full.shape[-1]) and torch.allclose(last, full[:, -1:], atol=1e-5)


def test_xattn_at_init_leaves_the_hf_lm_exactly_unchanged(llama):
    model, tok = make(llama, "xattn")
    ids = torch.tensor([tok.encode_chat(CHAT, n_visual=0).input_ids])
    with torch.no_grad():
        vlm = model(ids, visual=torch.randn(1, 4, 32)).logits
        alone = model.lm.model(input_ids=ids).logits
        assert torch.equal(vlm, alone)
        model.connector.blocks[0].attn_gate.fill_(1.0)
        assert not torch.allclose(model(ids, visual=torch.randn(1, 4, 32)).logits, alone)


def test_stage1_leaves_the_hf_lm_bit_identical_and_the_checkpoint_round_trips(llama, tmp_path):
    model, tok = make(llama)
    batch = {**collate([tok.encode_chat(CHAT, n_visual=4)], tok.pad_id), "visual": torch.randn(1, 4, 32)}
    model.freeze(1)
    before = {k: v.clone() for k, v in model.lm.state_dict().items()}
    opt = torch.optim.AdamW(model.param_groups(lr=1e-2))
    model(**batch).loss.backward()
    opt.step()
    assert all(torch.equal(v, before[k]) for k, v in model.lm.state_dict().items())
    model.eval()
    save_checkpoint(tmp_path / "ck", model, tok, tower={"model": "tiny-clip"})
    assert (tmp_path / "ck" / "lm" / "tokenizer.json").is_file()
    ck = load_checkpoint(tmp_path / "ck")
    with torch.no_grad():
        assert torch.equal(ck.model(**batch).logits, model(**batch).logits)
    assert ck.tokenizer.image_id == tok.image_id and ck.config.lm == f"hf:{llama}"


def test_missing_transformers_is_a_clear_usage_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(UsageError, match=r"pip install 'vlmtool\[hf\]'"):
        new_model(tiny_config(lm=f"hf:{tmp_path}"))


def test_a_folder_without_a_model_is_a_clear_usage_error(tmp_path):
    with pytest.raises(UsageError, match="cannot load"):
        new_model(tiny_config(lm=f"hf:{tmp_path}"))
