"""Small feature shards in the documented format (features.py's docstring), synth-style
instruction rows, and the data side of `vlmtool train`: join, loss mask, text mix, bad input.
The builders here are imported by the other test_train*/test_infer* modules."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from vlmtool.vlm.tiny import COLOURS, SHAPES

WIDTH = 32


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny models run on one thread: on a shared 2-core machine, torch's thread pool waiting
    for busy cores made them ten times slower. Restored after each test."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_features(root: Path, shards: int = 2, per_shard: int = 10, width: int = WIDTH, tokens: int = 4, seed: int = 0) -> Path:
    """DIR/features.json + DIR/shards/0000i.tar with KEY.tokens.npy (float16 [tokens, width]) and
    KEY.json; a sample's vectors encode its colour and shape, so there is something to learn."""
    from vlmtool.core.shards import ShardTarWriter, write_json
    from vlmtool.features import FORMAT_NAME, FORMAT_VERSION, npy_bytes

    rng = np.random.default_rng(seed)
    (root / "shards").mkdir(parents=True, exist_ok=True)
    write_json(root / "features.json", {"format": FORMAT_NAME, "version": FORMAT_VERSION,
                                        "tower": {"width": width, "arch": "tiny-clip", "pretrained": None, "layer": -2, "cls": False}})
    for s in range(shards):
        w = ShardTarWriter(root / "shards" / f"{s:05d}.tar")
        for i in range(per_shard):
            c, sh = (s * per_shard + i) % len(COLOURS), (s * per_shard + i * 5) % len(SHAPES)
            vec = rng.normal(0, 0.1, (tokens, width)).astype(np.float32)
            vec[:, c] += 1.0
            vec[:, len(COLOURS) + sh] += 1.0
            key = f"{s:05d}{i:04d}"
            meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "source": {"shard": f"/data/raw/{s:05d}.tar", "key": key},
                    "text": {"caption": f"A {COLOURS[c]} {SHAPES[sh]}."}, "tokens": tokens, "kind": "image",
                    "views": [{"kind": "image", "rows": [0, tokens]}]}
            w.write({"__key__": key, "tokens.npy": npy_bytes(vec.astype(np.float16)), "json": json.dumps(meta).encode()})
        w.commit()
    return root


def make_instructions(path: Path, feats: Path, extra_unjoined: int = 0, fmt: str = "conversations") -> Path:
    """One LLaVA row per feature sample (plus rows naming keys without features)."""
    from vlmtool import features

    rows = []
    for s in features.read(features.feature_shards([str(feats)])):
        cap = s["meta"]["text"]["caption"]
        colour, shape = cap[2:-1].split()
        rows.append(_row(s["meta"]["source"]["shard"], s["key"], f"What colour is the {shape}?", f"The {shape} is {colour}.", fmt))
    for i in range(extra_unjoined):
        rows.append(_row("/data/raw/00000.tar", f"missing{i}", "What is this?", "Nothing.", fmt))
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _row(shard: str, key: str, q: str, a: str, fmt: str) -> dict:
    if fmt == "messages":
        return {"id": key, "shard": shard, "key": key, "task": "conversation",
                "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]},
                             {"role": "assistant", "content": a}]}
    return {"id": key, "image": f"{key}.jpg", "shard": shard, "key": key, "task": "conversation",
            "conversations": [{"from": "human", "value": "<image>\n" + q}, {"from": "gpt", "value": a}]}


def tiny_opts(**kw):
    from vlmtool.vlm.train import TrainOptions

    base = {"steps": 4, "batch_size": 4, "d_model": 32, "n_layers": 2, "n_heads": 4, "vocab_size": 300, "max_seq": 128,
            "workers": 0, "save_every": 2, "progress": False, "device": "cpu", "val_samples": 2, "warmup": 0, "shuffle_buffer": 8}
    return TrainOptions(**{**base, **kw})


# ---------------------------------------------------------------------------------- tests


def test_plan_joins_rows_by_shard_stem_and_counts_the_unjoined(tmp_path):
    from vlmtool.vlm.train import make_plan

    feats = make_features(tmp_path / "f")
    ins = make_instructions(tmp_path / "i.jsonl", feats, extra_unjoined=3, fmt="messages")
    with open(ins, "a") as f:
        f.write("{not json\n")
    plan = make_plan([str(feats)], tiny_opts(stage=2, instructions=str(ins)))
    assert plan.counts["instruction_rows"] == 24
    assert plan.counts["instruction_joined"] == 20
    assert plan.counts["instruction_unjoined"] == 3
    assert plan.counts["instruction_malformed"] == 1
    assert len(plan.usable) == 20 and len(plan.val_keys) == 2


def test_loss_mask_covers_the_assistant_reply_only(tmp_path):
    from vlmtool.vlm.data import Prep
    from vlmtool.vlm.tiny import tiny_tokenizer
    from vlmtool.vlm.tokenizer import IGNORE

    tok = tiny_tokenizer()
    turns = [("<image>\nWhat colour is the cube?", "The cube is red.")]
    s = {"key": "k", "stem": "0", "caption": "A red cube.", "tokens": np.ones((3, WIDTH), np.float16), "meta": {"views": [{"kind": "image", "rows": [0, 3]}]}}
    item = Prep(2, tok, rows={("0", "k"): [turns]}).visual_item(s, turns)
    trained = [t for t, lab in zip(item["ids"], item["labels"]) if lab != IGNORE]
    assert tok.decode(trained, skip_special=True).strip() == "The cube is red."
    assert trained[-1] == tok.end_id  # the end-of-turn marker is learned too, so generation stops
    assert item["ids"].count(tok.image_id) == 3 and item["visual"][1] == (3, WIDTH)


def test_text_mix_rate_is_about_the_fraction_asked(tmp_path):
    from vlmtool.vlm.data import _draws

    rng = random.Random(0)
    n = [_draws(0.25, rng) for _ in range(4000)]
    assert abs(sum(n) / (sum(n) + len(n)) - 0.25) < 0.02
    assert _draws(0.0, rng) == 0


def test_nothing_to_train_on_is_one_line(tmp_path):
    from vlmtool.errors import UsageError
    from vlmtool.vlm.train import make_plan

    feats = make_features(tmp_path / "f", shards=1, per_shard=3)
    ins = tmp_path / "i.jsonl"
    ins.write_text(json.dumps(_row("/x/99999.tar", "nokey", "q", "a", "conversations")) + "\n")
    with pytest.raises(UsageError, match="none of the 1 instruction rows joins"):
        make_plan([str(feats)], tiny_opts(stage=2, instructions=str(ins)))


def test_a_shard_of_another_width_is_refused(tmp_path):
    from vlmtool.errors import UsageError
    from vlmtool.vlm.data import open_inputs

    a = make_features(tmp_path / "a", shards=1, per_shard=2)
    b = make_features(tmp_path / "b", shards=1, per_shard=2, width=16)
    (b / "shards" / "00000.tar").rename(a / "shards" / "00001.tar")
    with pytest.raises(UsageError, match="width 16"):
        open_inputs([str(a)])


def make_tower_features(root: Path, shards: int = 1, per_shard: int = 10) -> Path:
    """Feature shards whose features.json names a real (random, saved) tiny-clip tower, so that
    `vlmtool infer` can encode new images with it: width 128, as tiny-clip's ViT."""
    import torch

    from vlmtool.clip.model import load_clip
    from vlmtool.core.shards import read_json, write_json

    feats = make_features(root, shards=shards, per_shard=per_shard, width=128)
    torch.manual_seed(0)
    torch.save(load_clip("tiny-clip", "random").model.state_dict(), root / "tiny-clip.pt")
    fj = read_json(feats / "features.json")
    fj["tower"].update({"pretrained": str(root / "tiny-clip.pt"), "image_size": 64, "patch_size": 8})
    write_json(feats / "features.json", fj)
    return feats


def test_a_run_whose_every_sample_is_too_long_stops_with_one_line(tmp_path):
    from vlmtool.errors import UsageError
    from vlmtool.vlm.train import run_train

    feats = make_features(tmp_path / "f", shards=1, per_shard=4, tokens=40)
    with pytest.raises(UsageError, match="too_long: 4"):
        run_train([str(feats)], str(tmp_path / "o"), tiny_opts(stage=1, max_seq=32, val_samples=0))


def test_length_grouped_batches_pad_less_and_keep_every_item_once():
    from vlmtool.core.records import Reject
    from vlmtool.core.train import Batcher, EpochEnd, length_grouped

    rnd = random.Random(3)
    items = [{"i": i, "ids": [0] * rnd.randint(5, 120)} for i in range(768)]  # 3 groups of 8 batches of 32
    stream = [*items[:100], Reject("s", "k", "too_long", ""), *items[100:], EpochEnd(1, 768)]

    def batcher(groups, skip=0):
        return Batcher(length_grouped(iter(stream), 32, lambda it: len(it["ids"]), groups, seed=7), 32, skip=skip)

    plain, b = batcher(1), batcher(8)
    plain, grouped = [plain.next_batch() for _ in range(24)], [b.next_batch() for _ in range(24)]
    assert sorted(it["i"] for bt in grouped for it in bt) == list(range(768))  # nothing lost or repeated
    assert b.rejected == {"too_long": 1}
    padded = lambda bs: sum(len(bt) * max(len(it["ids"]) for it in bt) for bt in bs)  # noqa: E731
    assert padded(grouped) < 0.75 * padded(plain)
    longest = [max(len(it["ids"]) for it in bt) for bt in grouped[:8]]
    assert longest != sorted(longest)  # the batches of a group come in a shuffled order
    # a resumed Batcher, skipping the items consumed, continues with the very next batches
    first = batcher(8)
    for _ in range(5):
        first.next_batch()
    assert [it["i"] for it in batcher(8, skip=first.consumed).next_batch()] == [it["i"] for it in grouped[5]]
