"""The training batch: shifted targets (the loss reads the logits without a copy) and packed rows
(`--pack`): the same items give the same loss, and no token attends across samples."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlmtool.vlm.data import collate_items, pack, pack_rows
from vlmtool.vlm.lm import segment_mask
from vlmtool.vlm.model import new_model, segment_positions
from vlmtool.vlm.tiny import tiny_config, tiny_tokenizer
from vlmtool.vlm.tokenizer import IGNORE, ChatEncoding, collate

D_V = 32
CHATS = [("What colour is the cube?", "The cube is red."), ("Is there a ball?", "Yes, a blue ball on the left."),
         ("Describe it.", "A small green star beside a yellow square and a red circle."), ("Any star?", "No.")]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    m, _ = new_model(tiny_config(connector="mlp", d_vision=D_V), tok)
    return m.eval()


def items(tok, n_visual=(3, 5, 0, 4)):
    """Items as the trainer makes them: mixed lengths, image and text-only rows."""
    rng = np.random.default_rng(0)
    out = []
    for (q, a), nv in zip(CHATS * 2, n_visual * 2):
        enc = tok.encode_chat([(q, a)], n_visual=nv) if nv else tok.encode_text(f"{q} {a}")
        vis = pack(rng.normal(0, 1, (nv, D_V)).astype(np.float16)) if nv else None
        out.append({"ids": enc.input_ids, "labels": enc.labels, "visual": vis, "pixels": None})
    return out


def old_loss(model, batch_items, pad_id):
    """The loss as the model computed it before the targets were shifted in the data: aligned
    labels, the logits sliced and copied."""
    b = collate([ChatEncoding(it["ids"], it["labels"]) for it in batch_items], pad_id)
    vis = collate_items(batch_items, pad_id)
    out = model(b["input_ids"], attention_mask=b["attention_mask"], visual=vis["visual"], visual_mask=vis["visual_mask"])
    tgt = b["labels"][:, 1:]
    total = F.cross_entropy(out.logits[:, :-1].float().reshape(-1, out.logits.shape[-1]), tgt.reshape(-1), ignore_index=IGNORE,
                            reduction="sum")
    return total / (tgt != IGNORE).sum()


def test_shifted_targets_give_the_loss_of_aligned_labels(model, tok):
    its = items(tok)
    with torch.no_grad():
        new = model(**collate_items(its, tok.pad_id))
        vis = {k: v for k, v in collate_items(its, tok.pad_id).items() if k.startswith("visual")}
        aligned = model(**collate([ChatEncoding(it["ids"], it["labels"]) for it in its], tok.pad_id), **vis)
        old = old_loss(model, its, tok.pad_id)
    assert abs(float(new.loss) - float(old)) < 1e-6
    assert abs(float(aligned.loss) - float(old)) < 1e-6  # labels= (aligned) is shifted in the model, same loss
    assert int(new.n_label_tokens) == sum(sum(lab != IGNORE for lab in it["labels"][1:]) for it in its)


@pytest.mark.parametrize("packed", [0, 64])
def test_the_head_on_label_tokens_only_gives_the_full_loss_and_gradients(tok, packed):
    """forward(logits=False), as the trainer calls it: the head runs on the label positions alone
    (no logits for the prompt, the image slots or the padding), with the loss and every gradient
    of the full [B, T, V] logits."""
    torch.manual_seed(0)
    m, _ = new_model(tiny_config(connector="mlp", d_vision=D_V), tok)
    batch = collate_items(items(tok), tok.pad_id, pack=packed)
    assert (batch["targets"] == IGNORE).float().mean() > 0.3  # most positions are no label: the head skips them
    losses, grads, ns = [], [], []
    for logits in (True, False):
        m.zero_grad()
        out = m(**batch, logits=logits)
        out.loss.backward()
        assert (out.logits is None) == (not logits)
        losses.append(float(out.loss.detach()))
        ns.append(int(out.n_label_tokens))
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]))
    assert ns[0] == ns[1] == int((batch["targets"] != IGNORE).sum())
    assert abs(losses[0] - losses[1]) < 1e-5  # the same terms, summed in another order
    assert grads[0].shape == grads[1].shape and torch.allclose(grads[0], grads[1], atol=1e-5)


def test_packed_rows_give_the_unpacked_loss_and_gradients(tok):
    torch.manual_seed(0)
    m, _ = new_model(tiny_config(connector="mlp", d_vision=D_V), tok)
    its = items(tok)
    packed = collate_items(its, tok.pad_id, pack=64)
    assert packed["input_ids"].shape[0] < len(its)  # rows do hold several items
    losses, grads = [], []
    for batch in (collate_items(its, tok.pad_id), packed):
        m.zero_grad()
        out = m(**batch)
        out.loss.backward()
        losses.append(float(out.loss.detach()))
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]))
        assert int(out.n_label_tokens) == int((batch["targets"] != IGNORE).sum())
    assert abs(losses[0] - losses[1]) < 1e-5
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_no_token_attends_across_samples(model, tok):
    """The mask has no entry across samples, positions restart at each sample, and every packed
    sample's logits equal its logits alone."""
    its = items(tok)
    batch = collate_items(its, tok.pad_id, pack=64)
    seg = batch["segment_ids"]
    mask = segment_mask(seg)[:, 0]  # [R, T, T]
    across = (seg[:, :, None] != seg[:, None, :]) & (seg[:, :, None] > 0)
    assert not (mask & across).any()
    pos = segment_positions(seg)
    for r in range(seg.shape[0]):
        for s in seg[r].unique().tolist():
            if s:
                assert pos[r][seg[r] == s].tolist() == list(range(int((seg[r] == s).sum())))
    with torch.no_grad():
        logits = model(**batch).logits  # [R, T, V]
        rows = pack_rows([len(it["ids"]) for it in its], 64)
        for r, row in enumerate(rows):
            for s, i in enumerate(row, start=1):
                alone = model(**collate_items([its[i]], tok.pad_id)).logits[0]  # [T_i, V]
                assert torch.allclose(logits[r, seg[r] == s], alone, atol=1e-5)
    assert any(len(row) > 1 for row in rows)


def test_pack_rows_is_first_fit_decreasing_and_pure():
    lengths = [69, 120, 40, 90, 30, 60, 10, 128, 200]
    rows = pack_rows(lengths, 128)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 200 for r in rows)  # the longest item sets the rows' length
    assert rows == pack_rows(list(lengths), 128)
    assert [8] in rows  # the longest item fills its row alone
    short = pack_rows(lengths[:-1], 128)  # the same items without the 200: a 128 cap
    assert len(rows) == 4 and len(short) == 5  # rows fill to 200 when the batch is 200 wide
    assert all(sum(lengths[i] for i in r) <= 128 for r in short)


# ---------------------------------------------------------------------------------- the trainer


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from test_train_data import make_features, make_instructions

    root = tmp_path_factory.mktemp("pack")
    feats = make_features(root / "feats")
    return feats, make_instructions(root / "instructions.jsonl", feats)


def _log_losses(folder) -> list[float]:
    import json

    return [json.loads(r)["loss"] for r in (folder / "train_log.jsonl").read_text().splitlines() if '"loss"' in r]


def test_train_pack_gives_the_unpacked_step_losses_and_resumes_exactly(data, tmp_path):
    from test_train import weights
    from test_train_data import tiny_opts

    from vlmtool.vlm.train import run_train

    feats, ins = data
    opts = {"stage": 2, "instructions": str(ins), "steps": 6, "text_mix": 0.3, "save_every": 100, "batch_size": 6}
    torch.set_num_threads(1)
    run_train([str(feats)], str(tmp_path / "plain"), tiny_opts(**opts))
    run_train([str(feats)], str(tmp_path / "packed"), tiny_opts(**opts, pack=96))
    a, b = _log_losses(tmp_path / "plain"), _log_losses(tmp_path / "packed")
    assert len(a) == len(b) == 6 and abs(a[0] - b[0]) < 1e-5 and all(abs(x - y) < 1e-4 for x, y in zip(a, b))
    first = run_train([str(feats)], str(tmp_path / "stopped"), tiny_opts(**opts, pack=96, stop_at=3))
    assert first["steps"] == 3
    run_train([str(feats)], str(tmp_path / "stopped"), tiny_opts(**opts, pack=96))
    w1, w2 = weights(tmp_path / "packed"), weights(tmp_path / "stopped")
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6) for k in w1)


def test_pack_refuses_what_it_cannot_pack_in_one_line(data, tmp_path):
    from test_train_data import tiny_opts

    from vlmtool.errors import UsageError
    from vlmtool.vlm.train import run_train

    feats, ins = data
    for kw, what in (({"pack": -1}, "--pack must be"), ({"pack": 64, "lm": "hf:gpt2"}, "bundled LM"),
                     ({"pack": 64, "connector": "xattn"}, "mlp connector"), ({"pack": 4096}, "longer than the LM")):
        with pytest.raises(UsageError, match=what) as e:
            run_train([str(feats)], str(tmp_path / "x"), tiny_opts(stage=2, instructions=str(ins), steps=1, **kw))
        assert "\n" not in str(e.value)


@pytest.mark.slow
def test_two_rank_ddp_packed_matches_one_process_packed(tmp_path):
    import subprocess
    import sys

    from test_train import _env, _train_args, weights
    from test_train_data import make_features, tiny_opts

    from vlmtool.vlm.train import run_train

    feats = make_features(tmp_path / "f", shards=2, per_shard=3)
    common = ["--stage", "1", "--steps", "3", "--save-every", "10", "--shuffle-buffer", "1", "--lr", "0.01", "--pack", "64"]
    run_train([str(feats)], str(tmp_path / "one"), tiny_opts(stage=1, steps=3, save_every=10, shuffle_buffer=1, lr=0.01, batch_size=6,
                                                              pack=64))
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29571",
                          *_train_args(feats, tmp_path / "two", *common, "--batch-size", "3")[1:]],
                         env=_env(), capture_output=True, text=True, timeout=600, check=False)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
