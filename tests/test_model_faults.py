"""The model side under hostile input (train, infer, eval, encode): a spoiled feature member, a bad
instruction or question row, a non-finite value, a changed tower or config, a killed run, costs
one counted reject or one line, never the job, and never a NaN model that exits 0."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_train import _env, _train_args, cli, weights
from test_train_data import (  # noqa: F401 (one_thread: autouse)
    WIDTH,
    _row,
    make_features,
    make_instructions,
    make_tower_features,
    one_thread,
    tiny_opts,
)

from vlmtool.errors import JobFailed, UsageError


def _spoil(feats: Path, shard: str = "00000.tar", *spoiled: tuple[str, bytes | None, dict | None]) -> None:
    """Append records to a feature shard: (key, tokens.npy bytes or None to leave it out, json meta or None)."""
    from vlmtool.core.shards import ShardTarWriter
    from vlmtool.features import FORMAT_NAME, FORMAT_VERSION

    path = feats / "shards" / shard
    import tarfile

    with tarfile.open(path) as tf:
        members = [(m.name, tf.extractfile(m).read()) for m in tf if m.isfile()]
    w = ShardTarWriter(path)
    records: dict = {}
    for name, data in members:
        key, ext = name.split(".", 1)
        records.setdefault(key, {"__key__": key})[ext] = data
    for rec in records.values():
        w.write(rec)
    for key, tokens, meta in spoiled:
        meta = meta if meta is not None else {"format": FORMAT_NAME, "version": FORMAT_VERSION, "source": {"shard": "/data/raw/00000.tar", "key": key},
                                              "text": {"caption": "A red cube."}, "views": [{"kind": "image", "rows": [0, 4]}]}
        rec = {"__key__": key, "json": json.dumps(meta).encode()}
        if tokens is not None:
            rec["tokens.npy"] = tokens
        w.write(rec)
    w.commit()


def _npy(a) -> bytes:
    from vlmtool.features import npy_bytes

    return npy_bytes(a)


def _spoiled_members() -> dict[str, tuple[bytes | None, str]]:
    good = np.ones((4, WIDTH), np.float16)
    nan = good.copy()
    nan[2, 3] = np.nan
    inf = good.astype(np.float32)
    inf[0, 0] = np.inf
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return {
        "nan": (_npy(nan), "non_finite"), "inf": (_npy(inf), "non_finite"),
        "empty": (b"", "bad_features"), "truncated": (_npy(good)[:-7], "bad_features"), "notnpy": (b"\x89PNG....", "bad_features"),
        "wide": (_npy(np.ones((4, WIDTH * 2), np.float16)), "bad_features"), "flat": (_npy(np.ones(WIDTH * 4, np.float16)), "bad_features"),
        "fewrows": (_npy(np.ones((2, WIDTH), np.float16)), "bad_features"), "ints": (_npy(np.ones((4, WIDTH), np.int32)), "bad_features"),
        "pickled": (buf.getvalue(), "bad_features"), "norows": (_npy(np.ones((0, WIDTH), np.float16)), "bad_features"),
        "missing": (None, "missing_image"),
    }


def test_spoiled_feature_members_are_counted_rejects_and_training_goes_on(tmp_path):
    from vlmtool.vlm.train import run_train

    feats = make_features(tmp_path / "f", shards=1, per_shard=10)
    spoiled = _spoiled_members()
    _spoil(feats, "00000.tar", *[(f"bad{k}", data, None) for k, (data, _) in spoiled.items()])
    ins = make_instructions(tmp_path / "i.jsonl", feats)
    with open(ins, "a") as f:  # the spoiled samples have conversations too: their rows join, their features do not read
        f.writelines(json.dumps(_row("/data/raw/00000.tar", f"bad{k}", "What colour is the cube?", "Red.", "conversations")) + "\n"
                     for k in spoiled)
    s1 = run_train([str(feats)], str(tmp_path / "s1"), tiny_opts(stage=1, steps=6, val_samples=0))
    s2 = run_train([str(feats)], str(tmp_path / "s2"), tiny_opts(stage=2, steps=6, init=str(tmp_path / "s1"), instructions=str(ins)))
    for s in (s1, s2):
        assert s["complete"] and s["loss_last"] is not None and np.isfinite(s["loss_last"])
    want: dict[str, int] = {}
    for _, reason in spoiled.values():
        want[reason] = want.get(reason, 0) + 1
    rows = [json.loads(x) for x in (tmp_path / "s2" / "rejects.jsonl").read_text().splitlines()]
    assert {r["key"]: r["reason"] for r in rows} == {f"bad{k}": reason for k, (_, reason) in spoiled.items()}
    assert {k: v for k, v in s2["rejected"].items()} .keys() == want.keys()  # counted under each reason (once a pass)
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "s2").values())


def test_a_non_finite_loss_stops_the_run_naming_the_step_and_batch_and_saves_nothing_non_finite(tmp_path, monkeypatch):
    """A value that passes every read check but turns the loss non-finite in the model (here a
    batch spoiled after reading, from step 4 on): exit 1 naming the step and the batch's keys;
    the checkpoint on disk is the last finite one (step 2), never the spoiled step's."""
    import vlmtool.vlm.train as vt

    feats = make_features(tmp_path / "f", shards=1, per_shard=8)
    calls = {"n": 0}
    real = vt.collate_items

    def spoiled(items, pad_id, max_len=None, pack=0):
        batch = real(items, pad_id, max_len, pack)
        calls["n"] += 1
        if calls["n"] >= 4 and "visual" in batch:
            batch["visual"][0, 0, 0] = float("inf")
        return batch

    monkeypatch.setattr(vt, "collate_items", spoiled)
    with pytest.raises(JobFailed, match=r"non-finite loss .* at step 4.*00000/0000") as e:
        vt.run_train([str(feats)], str(tmp_path / "nan"), tiny_opts(stage=1, steps=10, save_every=2, val_samples=0))
    assert "\n" not in str(e.value)
    state = torch.load(tmp_path / "nan" / "train_state.pt", weights_only=True)
    assert state["step"] == 2 and json.loads((tmp_path / "nan" / "checkpoint.json").read_text())["extra"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "nan").values())


def test_bad_instruction_rows_cost_one_row_each(tmp_path):
    from vlmtool.vlm.train import make_plan, run_train

    feats = make_features(tmp_path / "f", shards=1, per_shard=10)
    ins = make_instructions(tmp_path / "i.jsonl", feats)
    good = json.loads(ins.read_text().splitlines()[0])
    conv = good["conversations"]
    bad = [
        {k: v for k, v in good.items() if k != "shard"} | {"image": "nofolder.jpg"},  # no shard anywhere
        {**good, "key": 7},  # a key that is not a string
        {**good, "conversations": [{"from": "human", "value": "<image>\n<image>\nTwo?"}, conv[1]]},
        {**good, "conversations": [conv[0], conv[1], {"from": "human", "value": "<image>\nAgain?"}, conv[1]]},
        {**good, "conversations": [conv[0], {"from": "gpt", "value": "<image> is it"}]},
        {**good, "conversations": [conv[0]]},
        [1, 2, 3],
    ]
    lines = [json.dumps(r) for r in bad] + ['{"torn', "x" * (2 << 20)]
    # a row without `shard` that names its image SHARD/KEY.jpg still joins
    moved = {k: v for k, v in good.items() if k != "shard"} | {"image": f"/data/raw/00000.tar/{good['key']}.jpg"}
    ins.write_text(ins.read_text() + "\n".join(lines) + "\n" + json.dumps(moved) + "\n")
    plan = make_plan([str(feats)], tiny_opts(stage=2, instructions=str(ins)))
    assert plan.counts["instruction_malformed"] == len(lines)
    assert plan.counts["instruction_malformed_by_reason"] == {"bad_row": 7, "bad_json": 1, "too_long": 1}
    assert plan.counts["instruction_joined"] == 11
    s = run_train([str(feats)], str(tmp_path / "o"), tiny_opts(stage=2, steps=4, instructions=str(ins)))
    assert s["complete"]


def test_an_over_long_validation_sample_is_left_out_not_fatal(tmp_path):
    from vlmtool.vlm.train import run_train

    feats = make_features(tmp_path / "f", shards=1, per_shard=20)
    ins = make_instructions(tmp_path / "i.jsonl", feats)
    rows = [json.loads(x) for x in ins.read_text().splitlines()]
    rows[0]["conversations"][1]["value"] = " ".join(["red"] * 400)  # the first usable sample is held out for validation
    ins.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for _ in range(2):  # and a rerun of the finished folder does not fail either
        s = run_train([str(feats)], str(tmp_path / "o"), tiny_opts(stage=2, steps=3, instructions=str(ins)))
        assert s["complete"] and s["val_loss"] is not None


def test_shard_names_that_differ_before_a_space_join_their_own_rows(tmp_path):
    from vlmtool.vlm.data import shard_stem
    from vlmtool.vlm.train import make_plan

    assert shard_stem("/d/A shard.tar") == "A shard" and shard_stem("https://h/x/0001.tar?sig=a b") == "0001"
    assert shard_stem("pipe:aws s3 cp 's3://b/00007.tar' -") != "pipe:aws" and shard_stem("pipe:cat /d/00007.tar") == "00007"
    feats = make_features(tmp_path / "f", shards=2, per_shard=4)
    import tarfile

    for src, name in (("00000.tar", "A shard.tar"), ("00001.tar", "B shard.tar")):
        out = feats / "shards" / name
        with tarfile.open(feats / "shards" / src) as tf, tarfile.open(out, "w") as w:
            for m in tf:
                data = tf.extractfile(m).read()
                if m.name.endswith(".json"):
                    meta = json.loads(data)
                    meta["source"]["shard"] = f"/raw/{name}"
                    meta["source"]["key"] = m.name.split(".")[0][-4:]
                    data = json.dumps(meta).encode()
                info = tarfile.TarInfo(m.name[5:])  # keys 0000..0003 in both shards
                info.size = len(data)
                w.addfile(info, io.BytesIO(data))
        (feats / "shards" / src).unlink()
    rows = [_row(f"/raw/{n}", f"{i:04d}", "Which shard?", n, "conversations") for n in ("A shard.tar", "B shard.tar") for i in range(4)]
    (tmp_path / "i.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plan = make_plan([str(feats)], tiny_opts(stage=2, instructions=str(tmp_path / "i.jsonl"), val_samples=0))
    assert plan.counts["instruction_joined"] == 8
    assert {k: [t[0][1] for t in v] for k, v in plan.instructions.rows.items()} == \
        {(f"{n} shard", f"{i:04d}"): [f"{n} shard.tar"] for n in "AB" for i in range(4)}


def test_init_empty_and_a_bad_training_state_are_one_line(tmp_path):
    from vlmtool.vlm.train import run_train

    feats = make_features(tmp_path / "f", shards=1, per_shard=6)
    with pytest.raises(UsageError, match="--init is empty"):
        run_train([str(feats)], str(tmp_path / "o"), tiny_opts(stage=1, init=""))
    run_train([str(feats)], str(tmp_path / "o"), tiny_opts(stage=1, steps=2, stop_at=1))
    for garbage in (b"", b"not a torch file", None):
        state = tmp_path / "o" / "train_state.pt"
        if garbage is None:
            torch.save({"hello": torch.zeros(1)}, state)
        else:
            state.write_bytes(garbage)
        with pytest.raises(UsageError, match="train_state.pt") as e:
            run_train([str(feats)], str(tmp_path / "o"), tiny_opts(stage=1, steps=2))
        assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------- images


def _png(mode: str, size=(16, 12), **save) -> bytes:
    buf = io.BytesIO()
    if mode == "I;16":
        a = np.full(size[::-1], 40000, np.uint16)
        a[0, 0] = 0
        Image.fromarray(a).save(buf, "PNG")
    elif mode == "LA":
        Image.new("LA", size, (0, 0)).save(buf, "PNG")
    elif mode == "P":
        p = Image.new("P", size, 1)
        p.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
        p.save(buf, "PNG", transparency=1)
    elif mode == "CMYK":
        Image.new("CMYK", size, (0, 255, 255, 0)).save(buf, "JPEG", quality=95)
    elif mode == "EXIF":
        im = Image.new("RGB", size, (255, 0, 0))
        exif = im.getexif()
        exif[0x0112] = 6  # rotate 90 CW to view
        im.save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("mode,expect", [("I;16", 155), ("LA", 255), ("P", 255), ("CMYK", None), ("EXIF", None)])
def test_images_become_rgb_as_a_person_sees_them(mode, expect):
    from vlmtool.core.samples import decode_image

    im = decode_image(_png(mode))
    a = np.asarray(im)
    assert im.mode == "RGB"
    if expect is not None:
        assert abs(float(np.median(a)) - expect) <= 1, (mode, np.median(a))  # 16-bit 40000 -> 155, not clipped to white
    if mode == "CMYK":
        assert a[..., 0].mean() > 200 and a[..., 1].mean() < 60  # cyan-free, full magenta and yellow: red
    if mode == "EXIF":
        assert im.size == (12, 16)  # turned upright


# ---------------------------------------------------------------------------------- infer


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    from vlmtool.core.shards import read_json, write_json
    from vlmtool.encode.job import file_sha256
    from vlmtool.vlm.train import run_train

    root = tmp_path_factory.mktemp("faults")
    feats = make_tower_features(root / "feats")
    fj = read_json(feats / "features.json")
    fj["tower"].update({"weights_file": fj["tower"]["pretrained"], "weights_sha256": file_sha256(Path(fj["tower"]["pretrained"]))})
    write_json(feats / "features.json", fj)
    ins = make_instructions(root / "ins.jsonl", feats)
    run_train([str(feats)], str(root / "ck"), tiny_opts(stage=2, instructions=str(ins), steps=2))
    Image.new("RGB", (48, 40), (220, 20, 20)).save(root / "red.png")
    return root


def test_infer_rows_that_are_bad_cost_one_answer_each(ck, capsys):
    big = Image.new("RGB", (300, 300), (1, 2, 3))
    big.save(ck / "big.png")
    rows = [{"image": "red.png", "question": "What colour is the cube?"}, {"image": 5, "question": "x"}, {"image": "red.png", "question": None},
            {"question": ""}, [1], {"image": "big.png", "question": "Too big?"}, {"image": "red.png", "question": "word " * 2000},
            {"image": "red.png", "question": "cube " * 200}, {"image": None, "question": "Blind?"}]
    (ck / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{torn\n")
    code, err = cli("infer", "-c", ck / "ck", "--questions", ck / "q.jsonl", "--json", "--max-new-tokens", "4", "--device", "cpu",
                    "--max-pixels", str(200 * 200), "--batch-size", "4")
    assert code == 0, err
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(out) == len(rows) + 1
    kinds = [("answer" in r, r.get("error", "").split(":")[0]) for r in out]
    assert kinds == [(True, ""), (False, "bad_row"), (False, "bad_row"), (False, "bad_row"), (False, "bad_row"), (False, "image"),
                     (False, "too_long"), (False, "too_long"), (True, ""), (False, "bad_row")], kinds
    assert "image_too_large" in out[5]["error"]


def test_a_changed_tower_is_refused_in_one_line_unless_allowed(ck, tmp_path):
    import shutil

    shutil.copytree(ck / "ck", tmp_path / "ck")
    meta = json.loads((tmp_path / "ck" / "checkpoint.json").read_text())
    tower_file = tmp_path / "tower.pt"
    state = torch.load(meta["tower"]["weights_file"], weights_only=True)
    next(iter(state.values())).add_(1.0)
    torch.save(state, tower_file)
    meta["tower"].update({"weights_file": str(tower_file), "pretrained": str(tower_file)})
    (tmp_path / "ck" / "checkpoint.json").write_text(json.dumps(meta))
    args = ("infer", "-c", tmp_path / "ck", "--image", ck / "red.png", "-q", "What colour?", "--device", "cpu", "--max-new-tokens", "2")
    code, err = cli(*args)
    assert code == 2 and "changed since the features were encoded" in err and len(err.strip().splitlines()) == 1
    code, err = cli(*args, "--allow-tower-change")
    assert code == 0, err


@pytest.mark.slow
def test_infer_rebuilds_the_anyres_layout_the_checkpoint_was_trained_on(tmp_path, trained_clip):
    """encode --anyres llava-next -> train -> infer: the prompt's visual slots and newline slots are
    budget's count for that image, and the rows are the ones encode wrote for the same image."""
    from vlmtool.budget import image_tokens
    from vlmtool.encode.job import EncodeOptions, run_encode
    from vlmtool.vlm.checkpoint import load_checkpoint
    from vlmtool.vlm.infer import load_answerer
    from vlmtool.vlm.train import run_train

    from vlmtool.world import make_world

    make_world(tmp_path / "w", samples=6, shard_size=6, seed=3, sizes="small")
    run_encode([str(tmp_path / "w")], str(tmp_path / "f"), EncodeOptions(pretrained=str(trained_clip[0]), anyres="llava-next", workers=0,
                                                                         progress=False, device="cpu"))
    run_train([str(tmp_path / "f")], str(tmp_path / "s1"), tiny_opts(stage=1, steps=2, val_samples=0, max_seq=1024))
    tower = load_checkpoint(tmp_path / "s1").tower
    assert tower["views"]["anyres"] == "llava-next"
    ans = load_answerer(tmp_path / "s1", "cpu")
    for size in ((97, 61), (40, 130), (64, 64)):
        img = Image.new("RGB", size, (10, 200, 30))
        batch = ans.inputs([img], ["What is shown?"])
        ids = batch["input_ids"][0].tolist()
        n_img, n_nl = ids.count(ans.tok.image_id), ids.count(ans.tok.newline_id)
        opts = {"tile_size": tower["image_size"], "patch_size": tower["patch_size"],
                **{k: v for k, v in (tower["views"]["anyres_options"] or {}).items() if k not in ("tile_size", "patch_size")}}
        assert n_img + n_nl == image_tokens("llava-next", *size, **opts), size
        assert n_nl > 0 and batch["visual"].shape[1] == n_img


# ---------------------------------------------------------------------------------- kill and resume


def _kill_trial(feats, ins, out: Path, rng: random.Random) -> float:
    common = ["--stage", "2", "--instructions", ins, "--steps", "24", "--batch-size", "4", "--save-every", "2", "--text-mix", "0.3",
              "--shuffle-buffer", "8", "--workers", "1"]
    p = subprocess.Popen(_train_args(feats, out, *common), env=_env(), stderr=subprocess.DEVNULL)
    kill_at = rng.randint(1, 20)
    deadline = time.time() + 240
    log = out / "train_log.jsonl"
    while p.poll() is None and time.time() < deadline:
        if log.exists() and log.read_bytes().count(b'"loss"') >= kill_at:
            break
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    t0 = time.time()
    r = subprocess.run(_train_args(feats, out, *common, "--json"), env=_env(), capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-2000:]  # no "another vlmtool job is running": the worker died with its parent
    return time.time() - t0


@pytest.mark.slow
def test_sigkilled_runs_with_a_loader_worker_resume_at_once_to_the_same_weights(tmp_path):
    """SIGKILL `train -w 1` at random steps, rerun at once: the same final weights as a run never
    killed, every trial (VLMTOOL_KILL_TRIALS, default 3; the closing note's figure used 10)."""
    from vlmtool.vlm.train import run_train

    feats = make_features(tmp_path / "f", shards=2, per_shard=10)
    ins = make_instructions(tmp_path / "i.jsonl", feats)
    run_train([str(feats)], str(tmp_path / "straight"), tiny_opts(stage=2, instructions=str(ins), steps=24, save_every=2, text_mix=0.3,
                                                                    workers=1))
    want = weights(tmp_path / "straight")
    rng = random.Random(int(os.environ.get("VLMTOOL_KILL_SEED", "0")))
    for trial in range(int(os.environ.get("VLMTOOL_KILL_TRIALS", "3"))):
        _kill_trial(feats, ins, tmp_path / f"k{trial}", rng)
        got = weights(tmp_path / f"k{trial}")
        assert all(torch.allclose(want[k], got[k], atol=1e-5) for k in want), trial


def test_a_worker_holds_no_lock_and_dies_with_its_parent(tmp_path):
    """The mechanism: a forked loader worker closes its copy of the folder lock (the parent keeps
    it), and the kernel kills it when the parent dies."""
    from vlmtool.core.job import Job
    from vlmtool.vlm.train import TrainOptions

    code = f"""
import os, sys, time, signal
from vlmtool.core.job import Job
from vlmtool.core.runtime import _LOCK_FDS
from vlmtool.core.runtime import dist_info
from vlmtool.core.batches import _worker_init
from vlmtool.vlm.train import TrainOptions
job = Job("t", {str(tmp_path / 'o')!r}, TrainOptions(), [], dist_info())
pid = os.fork()
if pid == 0:
    _worker_init(0, parent=os.getppid())
    print(len(_LOCK_FDS), flush=True)
    time.sleep(60)
    os._exit(0)
print(pid, flush=True)
time.sleep(60)
"""
    p = subprocess.Popen([sys.executable, "-c", code], env=_env(), stdout=subprocess.PIPE, text=True)
    first, second = sorted([p.stdout.readline().strip(), p.stdout.readline().strip()], key=len)
    assert first == "0"  # the worker holds no lock descriptor
    child = int(second)
    with pytest.raises(UsageError, match="another vlmtool job"):
        Job("t", str(tmp_path / "o"), TrainOptions(), [])  # the parent's lock holds
    p.kill()
    p.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{child}/stat") as f:
            if f.read().split()[2] == "Z":
                break
        time.sleep(0.05)
    else:
        pytest.fail("the worker outlived its parent")
    Job("t", str(tmp_path / "o"), TrainOptions(), []).close()  # free at once
