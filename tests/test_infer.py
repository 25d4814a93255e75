"""`vlmtool infer` and the inference API: the KV cache changes no token (through the CLI),
batching changes no answer, blind and sampled decoding, the synth teacher, bad input."""

from __future__ import annotations

import asyncio
import json

import pytest
from PIL import Image
from test_train import cli
from test_train_data import (  # noqa: F401 (one_thread: autouse)
    make_instructions,
    make_tower_features,
    one_thread,
    tiny_opts,
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from vlmtool.vlm.train import run_train

    root = tmp_path_factory.mktemp("infer")
    feats = make_tower_features(root / "feats")
    ins = make_instructions(root / "ins.jsonl", feats)
    run_train([str(feats)], str(root / "ck"), tiny_opts(stage=2, instructions=str(ins), steps=3, lr=3e-3))
    for name, colour in (("red.png", (220, 20, 20)), ("blue.png", (20, 20, 220))):
        Image.new("RGB", (48, 40), colour).save(root / name)
    return root


def test_kv_cache_gives_the_same_tokens_through_the_cli(ckpt, capsys):
    rows = [{"image": "red.png", "question": "What colour is the cube?"}, {"image": "blue.png", "question": "Is there a ball?"},
            {"image": None, "question": "What colour is the star?"}, {"image": "missing.png", "question": "x"}]
    (ckpt / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    outs = {}
    for extra in ((), ("--no-cache",), ("--temperature", "1.0", "--seed", "3"), ("--temperature", "1.0", "--seed", "3", "--no-cache")):
        code, err = cli("infer", "-c", ckpt / "ck", "--questions", ckpt / "q.jsonl", "--json", "--max-new-tokens", "12", "--device", "cpu", *extra)
        assert code == 0, err
        outs[extra] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    greedy, sampled = outs[()], outs[("--temperature", "1.0", "--seed", "3")]
    assert greedy == outs[("--no-cache",)] and sampled == outs[("--temperature", "1.0", "--seed", "3", "--no-cache")]
    assert [("answer" in r, "error" in r) for r in greedy] == [(True, False)] * 3 + [(False, True)]
    assert greedy != sampled


def test_answerer_batches_blind_and_encodes_with_the_checkpoint_tower(ckpt):
    from vlmtool.vlm.checkpoint import load_checkpoint
    from vlmtool.vlm.infer import encode_image, load_answerer

    imgs = [Image.open(ckpt / "red.png"), Image.open(ckpt / "blue.png"), Image.open(ckpt / "red.png")]
    qs = ["What colour is the cube?", "Is there a ball in the image?", "What?"]
    tower = load_checkpoint(ckpt / "ck").tower
    assert tuple(encode_image(tower, imgs[0]).shape) == (64, 128)  # tiny-clip: 8x8 patches of width 128, no CLS
    together = load_answerer(ckpt / "ck", "cpu", batch_size=3).answer(imgs, qs, max_new_tokens=8)
    alone = load_answerer(ckpt / "ck", "cpu", batch_size=1).answer(imgs, qs, max_new_tokens=8)
    assert together == alone and len(together) == 3  # left padding changes no answer
    blind = load_answerer(ckpt / "ck", "cpu").answer(None, qs, max_new_tokens=8)
    assert len(blind) == 3 and all(isinstance(a, str) for a in blind)


def test_local_teacher_answers_a_synth_request(ckpt):
    from vlmtool.synth.tasks import Request
    from vlmtool.synth.teachers import LocalTeacher
    from vlmtool.vlm.infer import load_answerer

    data = (ckpt / "red.png").read_bytes()
    req = Request(key="k", sample_key="s", shard="00000", shard_url="x.tar", task="negative", prompt="p", system="",
                  image_bytes=data, image_ext="png", caption="A red cube.", question="Is there a ball in the image?")
    res = asyncio.run(LocalTeacher(ckpt / "ck", "cpu", max_new_tokens=8).generate(req))
    want = load_answerer(ckpt / "ck", "cpu").answer([Image.open(ckpt / "red.png")], [req.question], max_new_tokens=8)[0]
    assert res.failed is None and res.turns == [{"question": req.question, "answer": want}]
    broken = asyncio.run(LocalTeacher(ckpt / "ck", "cpu").generate(Request(**{**req.__dict__, "image_bytes": b"not an image"})))
    assert broken.failed == "local_error" and broken.turns is None


def test_missing_checkpoint_and_missing_image_are_one_line(ckpt, tmp_path):
    code, err = cli("infer", "-c", tmp_path / "nope", "--image", ckpt / "red.png", "-q", "x", "--device", "cpu")
    assert code == 2 and err.strip() == f"vlmtool: error: checkpoint {tmp_path / 'nope'}: no such folder"
    code, err = cli("infer", "-c", ckpt / "ck", "--image", tmp_path / "none.png", "-q", "x", "--device", "cpu")
    assert code == 2 and "no such file" in err and len(err.strip().splitlines()) == 1


def test_infer_over_image_shards_answers_every_sample(ckpt, capsys):
    from conftest import FIXTURES

    from vlmtool.core.records import Reject, iter_samples
    from vlmtool.core.samples import SampleError
    from vlmtool.core.shards import expand_inputs, shard_refs

    keys, broken = [], 0
    for ref in shard_refs(expand_inputs([str(FIXTURES / "shapes")])):
        for s in iter_samples(ref):
            try:
                if isinstance(s, Reject):
                    raise SampleError(s.reason)
                s.load_image()
                keys.append((ref.name, s.key))
            except SampleError:
                broken += 1
    code, err = cli("infer", "-c", ckpt / "ck", "--shards", FIXTURES / "shapes", "-q", "What is shown?", "--json",
                    "--max-new-tokens", "2", "--device", "cpu", "--batch-size", "16")
    assert code == 0, err
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    answered = [(r["shard"], r["key"]) for r in rows if "answer" in r]
    assert answered == keys  # every readable sample once, in order; broken ones as error rows
    assert all("error" in r for r in rows if "answer" not in r) and len(rows) == len(keys) + broken
