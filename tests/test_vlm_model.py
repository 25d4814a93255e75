"""The bundled VLM: xattn identity at init, KV-cache generation, curriculum freezing, overfitting."""

import pytest
import torch

from vlmtool.errors import UsageError
from vlmtool.vlm.config import VLMConfig
from vlmtool.vlm.connectors import patchify
from vlmtool.vlm.model import new_model
from vlmtool.vlm.tiny import tiny_config, tiny_tokenizer
from vlmtool.vlm.tokenizer import collate

D_V = 32
ANSWERS = ("The cube is red.", "The ball is blue.")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def make(tok, connector="mlp", seed=0, **kw):
    torch.manual_seed(seed)
    model, _ = new_model(tiny_config(connector=connector, d_vision=D_V, **kw), tok)
    return model


def layout(model):
    """(n_visual, newline_after) for the test images: 6 features, or a 16x32 image in 8-px patches."""
    if model.config.connector == "native":
        return model.native_layout(16, 32)
    return model.slot_count(6), []


def sample_batch(model, tok, question="What colour is it?", seed=1):
    """Two samples with different images (features and pixels) and answers, as model inputs."""
    g = torch.Generator().manual_seed(seed)
    n, nl = layout(model)
    encs = [tok.encode_chat([(question, a)], n_visual=n, newline_after=nl) for a in ANSWERS]
    return {**collate(encs, tok.pad_id), "visual": torch.randn(2, 6, D_V, generator=g),
            "pixels": torch.randint(0, 256, (2, 3, 16, 32), generator=g, dtype=torch.uint8)}


def test_config_validates_and_round_trips_through_json(tmp_path):
    cfg = tiny_config(connector="xattn", xattn_every=2)
    cfg.to_json(tmp_path / "config.json")
    assert VLMConfig.from_json(tmp_path / "config.json") == cfg
    assert cfg.ffn_hidden == 192  # 8/3 * 64 rounded up to 64
    for bad in ({"connector": "qformer"}, {"d_model": 60}, {"n_kv_heads": 3}, {"lm": "gpt"}, {"connector": "xattn", "xattn_every": 9},
                {"image_size": 30}, {"n_layers": 0}):
        with pytest.raises(UsageError) as e:
            tiny_config(**bad)
        assert "\n" not in str(e.value)
    with pytest.raises(UsageError, match="unknown field"):
        VLMConfig.from_dict({"d_modle": 64})


def test_xattn_at_init_leaves_the_lm_logits_exactly_unchanged(tok):
    model = make(tok, "xattn").eval()
    b = sample_batch(model, tok)
    with torch.no_grad():
        with_image = model(b["input_ids"], visual=b["visual"]).logits
        lm_alone, _ = model.lm(model.lm.embed(b["input_ids"]))  # the same LM, no connector
        assert torch.equal(with_image, lm_alone)
        for block in model.connector.blocks:
            block.attn_gate.fill_(0.5)
            block.ffn_gate.fill_(0.5)
        gated = model(b["input_ids"], visual=b["visual"]).logits
        other_image = model(b["input_ids"], visual=torch.randn_like(b["visual"])).logits
    assert not torch.allclose(gated, lm_alone)
    assert not torch.allclose(gated, other_image)  # the answer now depends on the image


@pytest.mark.parametrize("connector", ["mlp", "xattn", "native"])
@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.8, "top_p": 0.9, "seed": 3}])
def test_kv_cache_generation_returns_the_same_tokens_as_without(tok, connector, sampling):
    model = make(tok, connector).eval()
    b = sample_batch(model, tok)
    n, nl = layout(model)
    prompts = [tok.encode_chat([("What colour is it?", None)], n_visual=n, newline_after=nl),
               tok.encode_chat([("Is there a red cube left of a blue ball here?", None)], n_visual=n, newline_after=nl)]
    p = collate(prompts, tok.pad_id, side="left")
    kw = dict(visual=b["visual"], pixels=b["pixels"], max_new_tokens=12, **sampling)
    cached = model.generate(p["input_ids"], p["attention_mask"], **kw)
    plain = model.generate(p["input_ids"], p["attention_mask"], use_cache=False, **kw)
    assert cached == plain and all(len(t) == 12 for t in cached)
    if not sampling:  # a left-padded row generates what it generates alone
        alone = model.generate(torch.tensor([prompts[0].input_ids]), visual=b["visual"][:1], pixels=b["pixels"][:1],
                               max_new_tokens=12)
        assert alone[0] == cached[0]


def test_logits_to_keep_is_the_tail_of_the_full_logits_and_generation_asks_for_one(tok, monkeypatch):
    model = make(tok).eval()
    ids = torch.tensor([tok.encode_chat([("What colour is the cube left of the ball?", None)]).input_ids])
    with torch.no_grad():
        full, _ = model.lm(model.lm.embed(ids))
        last, _ = model.lm(model.lm.embed(ids), logits_to_keep=1)
        two, _ = model.lm(model.lm.embed(ids), logits_to_keep=2)
    assert last.shape == (1, 1, full.shape[-1]) and torch.allclose(last, full[:, -1:], atol=1e-6)
    assert torch.allclose(two, full[:, -2:], atol=1e-6)
    shapes, forward = [], model.lm.forward

    def watched(*a, **k):
        out = forward(*a, **k)
        shapes.append(tuple(out[0].shape))
        return out

    monkeypatch.setattr(model.lm, "forward", watched)
    model.generate(ids, max_new_tokens=3)
    assert shapes and all(s[1] == 1 for s in shapes), shapes  # the prompt's prefill made one position's logits, not T


def test_generation_stops_at_a_stop_token_and_seeds_repeat(tok):
    model = make(tok).eval()
    ids = torch.tensor([tok.encode_chat([("Hi", None)]).input_ids])
    first = model.generate(ids, max_new_tokens=8)[0]
    assert model.generate(ids, max_new_tokens=8, stop_ids=[first[3]])[0] == first[:first.index(first[3])]
    a = model.generate(ids, max_new_tokens=8, temperature=1.0, seed=5)
    assert a == model.generate(ids, max_new_tokens=8, temperature=1.0, seed=5)
    assert a != model.generate(ids, max_new_tokens=8, temperature=1.0, seed=6)


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def train_step(model, batch, lr=1e-2):
    opt = torch.optim.AdamW(model.param_groups(weight_decay=0.01, lr=lr))
    loss = model(**batch).loss
    loss.backward()
    opt.step()
    return float(loss.detach())


@pytest.mark.parametrize("connector", ["mlp", "xattn", "native"])
def test_stage1_trains_only_the_connector_and_stage2_the_lm_too(tok, connector):
    model = make(tok, connector)
    b = sample_batch(model, tok)
    model.freeze(1)
    assert not any(p.requires_grad for p in model.lm.parameters())
    assert all(p.requires_grad for p in model.connector.parameters())
    lm0, conn0 = snapshot(model.lm), snapshot(model.connector)
    train_step(model, b)
    assert all(torch.equal(v, lm0[k]) for k, v in model.lm.state_dict().items())
    assert any(not torch.equal(v, conn0[k]) for k, v in model.connector.state_dict().items())
    model.freeze(2)
    assert all(p.requires_grad for p in model.parameters())
    train_step(model, b)
    assert any(not torch.equal(v, lm0[k]) for k, v in model.lm.state_dict().items())
    model.freeze(0)
    assert not any(p.requires_grad for p in model.connector.parameters())
    assert {g["name"] for g in model.param_groups()} == {"lm", "lm.no_decay"}
    with pytest.raises(UsageError):
        model.freeze(3)


def test_param_groups_hold_each_trainable_parameter_once_with_its_lr(tok):
    model = make(tok)  # tied embeddings: one tensor, two names
    model.freeze(2)
    groups = model.param_groups(weight_decay=0.1, lr=1e-3, lm_lr=2e-5)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert {g["name"]: g["lr"] for g in groups} == {"connector": 1e-3, "connector.no_decay": 1e-3, "lm": 2e-5,
                                                   "lm.no_decay": 2e-5}
    assert all(g["weight_decay"] == 0.0 for g in groups if g["name"].endswith("no_decay"))


@pytest.mark.parametrize("connector", ["mlp", "xattn", "native"])
def test_a_few_steps_overfit_a_toy_batch_and_the_answer_follows_the_image(tok, connector):
    """Same question, two images, two answers: only a model that reads the image can fit both."""
    model = make(tok, connector)
    model.freeze(2)
    b = sample_batch(model, tok, question="What is it?")
    opt = torch.optim.AdamW(model.param_groups(lr=3e-3))
    losses = []
    for _ in range(40):
        opt.zero_grad()
        out = model(**b)
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert out.n_label_tokens == sum(len(tok.encode(a)) + 1 for a in ANSWERS)
    assert losses[-1] < 0.1 * losses[0]
    model.eval()
    n, nl = layout(model)
    prompt = torch.tensor([tok.encode_chat([("What is it?", None)], n_visual=n, newline_after=nl).input_ids] * 2)
    replies = model.generate(prompt, visual=b["visual"], pixels=b["pixels"], max_new_tokens=10, stop_ids=tok.stop_ids)
    assert [tok.decode(r) for r in replies] == list(ANSWERS)


def test_visual_inputs_are_checked(tok):
    model = make(tok)
    b = sample_batch(model, tok)
    with pytest.raises(UsageError, match="d_vision=32"):
        model(b["input_ids"], visual=torch.randn(2, 6, 48))
    with pytest.raises(UsageError, match="6 visual slots but 5"):
        model(b["input_ids"], visual=b["visual"], visual_mask=torch.arange(6).expand(2, 6) < 5)
    with pytest.raises(UsageError, match="no visual"):
        model(b["input_ids"])
    text_only = collate([tok.encode_chat([("Hi", "Yes.")])] * 2, tok.pad_id)["input_ids"]
    with pytest.raises(UsageError, match="0 visual slots but 6"):  # features given, but no slots for them
        model(text_only, visual=b["visual"])
    xattn = make(tok, "xattn")
    with pytest.raises(UsageError, match="n_visual=0"):
        xattn(b["input_ids"], visual=b["visual"])


def test_text_only_rows_mix_with_image_rows(tok):
    model = make(tok).eval()
    img = tok.encode_chat([("What colour is it?", "Red.")], n_visual=6)
    txt = tok.encode_chat([("What colour is it?", "Red.")])
    b = collate([img, txt], tok.pad_id)
    visual, mask = torch.randn(2, 6, D_V), torch.tensor([[True] * 6, [False] * 6])
    with torch.no_grad():
        mixed = model(**b, visual=visual, visual_mask=mask).logits
        alone = model(torch.tensor([txt.input_ids])).logits
    assert torch.allclose(mixed[1, :len(txt)], alone[0], atol=1e-5)


def test_patchify_is_row_major_and_native_rows_get_newlines(tok):
    img = torch.arange(2 * 4 * 6).reshape(1, 2, 4, 6)  # C=2, H=4, W=6
    p = patchify(img, 2)  # 2 rows x 3 cols
    assert p.shape == (1, 6, 8)
    assert p[0, 1].tolist() == [2, 3, 8, 9, 26, 27, 32, 33]  # row 0, col 1: channel 0 then channel 1
    model = make(tok, "native")
    assert model.native_layout(16, 32) == (8, [3, 7])
    with pytest.raises(UsageError):
        model.native_layout(15, 32)


def test_replace_connector_keeps_the_lm_after_stage0(tok):
    model = make(tok, "mlp")
    ids = collate([tok.encode_text("A red cube is above a blue ball.")], tok.pad_id)["input_ids"]
    with torch.no_grad():
        before = model(ids).logits
        lm_state = snapshot(model.lm)
        model.replace_connector(connector="xattn", d_vision=48)
        after = model(ids, visual=torch.randn(1, 5, 48)).logits
    assert model.config.connector == "xattn" and model.config.d_vision == 48
    assert all(torch.equal(v, lm_state[k]) for k, v in model.lm.state_dict().items())
    assert torch.equal(before, after)
    with pytest.raises(UsageError, match="not d_model"):
        model.replace_connector(d_model=128)


def test_generation_stops_at_max_seq_and_longer_inputs_are_usage_errors(tok):
    model = make(tok, max_seq=24).eval()
    ids = torch.tensor([tok.encode_chat([("What colour is the cube?", None)]).input_ids])
    T = ids.shape[1]
    for use_cache in (True, False):
        assert len(model.generate(ids, max_new_tokens=100, use_cache=use_cache)[0]) == 24 - T + 1
    with pytest.raises(UsageError, match="max_seq 24"):
        model(torch.cat([ids] * 3, dim=1))
    with pytest.raises(UsageError, match="max_seq 24"):
        model.generate(torch.cat([ids] * 3, dim=1))


def test_the_slots_get_the_visual_vectors_in_order_and_the_newline_vector(tok):
    model = make(tok).eval()
    enc = tok.encode_chat([("What colour is it?", "Red.")], n_visual=4, newline_after=[1, 3])
    visual = torch.randn(1, 5, D_V)
    valid = torch.tensor([[True, False, True, True, True]])  # the second feature is padding
    with torch.no_grad():
        x = model.embed_inputs(torch.tensor([enc.input_ids]), visual, valid)[0]
        projected = model.connector(visual)[0, [0, 2, 3, 4]]
    assert torch.equal(x[enc.visual_positions], projected)
    assert all(torch.equal(x[p], model.connector.image_newline.detach()) for p in enc.newline_positions)
