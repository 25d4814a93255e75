"""`vlmtool export`: each layout read back by the library its trainer uses (datasets, TRL,
webdataset, the standard library's json), bytes equal to the shard members, every instruction
exactly once, bad input counted, and a killed export resumed to the same bytes."""

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import orjson
import pytest

from conftest import FIXTURES, json_out, run_cli
from vlmtool.export import ExportOptions, run_export
from vlmtool.errors import JobFailed, UsageError

FORMATS = ("llava", "hf", "sharegpt", "wds")


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def members(shards) -> dict:
    """(shard stem, key) -> the image member's bytes, read straight from the tars."""
    out = {}
    for t in sorted(Path(shards).glob("*.tar")):
        with tarfile.open(t) as tf:
            for m in tf:
                key, _, ext = m.name.partition(".")
                if ext in ("jpg", "png", "webp"):
                    out[(t.name[:-4], key)] = tf.extractfile(m).read()
    return out


def instructions(path) -> list[dict]:
    return [orjson.loads(line) for line in Path(path).read_bytes().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def synth_out(tmp_path_factory):
    """synth's captions teacher on the committed world (the demo's synth step), chat messages."""
    out = tmp_path_factory.mktemp("synth")
    run_cli("synth", FIXTURES / "shapes", "--out", out, "--teacher", "captions", "--format", "messages", "--no-progress")
    return out / "instructions.jsonl"


@pytest.fixture(scope="module")
def exports(synth_out, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {f: (root / f, json_out(run_cli("export", synth_out, "--shards", FIXTURES / "shapes", "--to", f, "--out", root / f,
                                           "--json", "--no-progress"))) for f in FORMATS}


def _user_text(msg):
    return "".join(p["text"] for p in msg["content"] if p["type"] == "text")


def test_every_format_holds_every_instruction_once_with_the_original_bytes(synth_out, exports):
    rows = {r["id"]: r for r in instructions(synth_out)}
    source = members(FIXTURES / "shapes")
    want = {i: sha(source[(r["image"].split("/")[0], r["key"])]) for i, r in rows.items()}
    assert len(rows) > 20
    for fmt, (out, summary) in exports.items():
        assert summary["complete"] and summary["rows"] == len(rows) and summary["rejected"] == {}, fmt
        got = {"llava": _llava_bytes, "hf": _hf_bytes, "sharegpt": _sharegpt_bytes, "wds": _wds_bytes}[fmt](out)
        assert len(got) == len(rows) and dict(got) == want, fmt  # each id once, bytes equal to the member


def _llava_bytes(out):
    data = json.loads((out / "llava.json").read_text())
    return [(e["id"], sha((out / "images" / e["image"]).read_bytes())) for e in data]


def _hf_bytes(out):
    import pyarrow.parquet as pq

    return [(r["id"], sha(r["image"]["bytes"])) for p in sorted((out / "data").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def _sharegpt_bytes(out):
    rows = [orjson.loads(line) for p in sorted((out / "data").glob("*.jsonl")) for line in p.read_bytes().splitlines()]
    return [(r["id"], sha((out / r["images"][0]).read_bytes())) for r in rows]


def _wds_bytes(out):
    import webdataset as wds

    ds = wds.WebDataset([str(p) for p in sorted((out / "shards").glob("*.tar"))], shardshuffle=False, empty_check=False)
    return [(json.loads(s["json"])["id"], sha(s["jpg"])) for s in ds]


def test_datasets_loads_the_hf_export_decoded_with_the_same_pixels_and_messages(synth_out, exports):
    import datasets
    import numpy as np
    from PIL import Image

    out, _ = exports["hf"]
    ds = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train")
    assert isinstance(ds.features["image"], datasets.Image)
    rows = {r["id"]: r for r in instructions(synth_out)}
    source = members(FIXTURES / "shapes")
    for ex in ds:
        row = rows[ex["id"]]
        assert isinstance(ex["image"], Image.Image)
        src = Image.open(io.BytesIO(source[(row["image"].split("/")[0], row["key"])]))
        assert np.array_equal(np.asarray(ex["image"]), np.asarray(src))
        strip = [{"role": m["role"], "content": [{k: v for k, v in p.items() if v is not None} for p in m["content"]]}
                 for m in ex["messages"]]
        assert strip == row["messages"]


def test_llava_export_follows_llavas_conversation_schema(exports):
    out, summary = exports["llava"]
    data = json.loads((out / "llava.json").read_text())
    assert isinstance(data, list) and summary["data_path"] == str(out / "llava.json")
    for e in data:
        conv = e["conversations"]
        assert [c["from"] for c in conv] == ["human", "gpt"] * (len(conv) // 2)
        assert conv[0]["value"].startswith("<image>\n")
        assert sum(c["value"].count("<image>") for c in conv) == 1
        assert (out / "images" / e["image"]).is_file()
    for folder in (out / "images").rglob("*"):
        if folder.is_dir():
            assert len(list(folder.iterdir())) <= 1000


def test_sharegpt_export_follows_llama_factorys_documented_schema(exports):
    """LLaMA-Factory itself is not installed here (its dependencies are far past the test extra):
    its data/README.md schema is checked, and the files are read the way its loader reads them
    (datasets' json builder over the files that dataset_info.json names)."""
    import datasets

    out, _ = exports["sharegpt"]
    info = json.loads((out / "dataset_info.json").read_text())
    entry = info["vlmtool"]
    assert entry["formatting"] == "sharegpt" and entry["columns"] == {"messages": "messages", "images": "images"}
    assert entry["tags"] == {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
    files = sorted(str(p) for p in (out / entry["file_name"]).iterdir())
    ds = datasets.load_dataset("json", data_files=files, split="train")
    for ex in ds:
        roles = [m["role"] for m in ex["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2)
        assert sum(m["content"].count("<image>") for m in ex["messages"]) == len(ex["images"]) == 1
        assert all((out / p).is_file() for p in ex["images"])


def test_trl_sfttrainer_takes_an_optimizer_step_on_the_hf_export(exports, tmp_path):
    import datasets
    import torch
    from trl import SFTConfig, SFTTrainer

    out, _ = exports["hf"]
    ds = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train")
    model, processor = _tiny_llava(ds)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = SFTConfig(output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=2, learning_rate=1e-2,
                     report_to=[], use_cpu=True, logging_steps=1, save_strategy="no", max_length=None, bf16=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=processor)
    result = trainer.train()
    assert result.global_step == 1 and torch.isfinite(torch.tensor(result.training_loss))
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert any(n.startswith("model.vision_tower") for n in changed), "the images reached the vision tower"
    assert any(n.startswith("model.multi_modal_projector") for n in changed)
    assert any(n.startswith("model.language_model") for n in changed)


_TEMPLATE = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' }}{% if m['content'] is string %}{{ m['content'] }}{% else %}"
             "{% for p in m['content'] %}{% if p['type'] == 'image' %}{{ '<image>' }}{% else %}{{ ' ' + p['text'] }}{% endif %}"
             "{% endfor %}{% endif %}{{ '<|end|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


def _tiny_llava(ds):
    """A randomly initialised LLaVA (CLIP tower 32 px, patches of 8; a one-layer Llama of width 32)
    and its processor, the tokenizer a WordLevel over the dataset's words, built offline."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaProcessor, PreTrainedTokenizerFast)

    words = {w for msgs in ds["messages"] for m in msgs for p in m["content"] if p["text"] for w in p["text"].split()}
    special = ["<pad>", "<unk>", "<s>", "<image>", "<|user|>", "<|assistant|>", "<|end|>"]
    vocab = {t: i for i, t in enumerate(special + sorted(words | set(".,?:!'")))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="<|end|>",
                                  additional_special_tokens=special[3:])
    tok.chat_template = _TEMPLATE
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                               chat_template=_TEMPLATE, num_additional_image_tokens=1)
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                                     image_size=32, patch_size=8, projection_dim=32),
                      text_config=LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                              num_key_value_heads=2, vocab_size=len(vocab), max_position_embeddings=1024),
                      image_token_index=vocab["<image>"], vision_feature_layer=-1, vision_feature_select_strategy="default",
                      pad_token_id=0)
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(cfg), processor


# ---------------------------------------------------------------------------------- bad input


def _tar(path: Path, members: dict) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, "JPEG")
    return buf.getvalue()


def _row(id, shard, key, q="Is there a circle?"):
    return {"id": id, "image": f"{shard}/{key}.jpg", "shard": shard, "key": key,
            "conversations": [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": "Yes."}]}


def test_bad_rows_and_shards_are_counted_rejects_and_nothing_leaves_out(tmp_path):
    jpg = _jpeg()
    (tmp_path / "s").mkdir()
    _tar(tmp_path / "s" / "good.tar", {"a.jpg": jpg, "a.txt": b"x", "b.jpg": jpg[:40], "../../escape.jpg": jpg, "c.txt": b"no image"})
    (tmp_path / "s" / "junk.tar").write_bytes(b"this is not a tar" * 100)
    lines = [_row("1", "good", "a"), _row("1", "good", "a", "again"), _row("2", "good", "b"), _row("3", "good", "../../escape"),
             _row("4", "good", "c"), _row("5", "good", "nosuch"), _row("6", "junk", "a"), _row("7", "../../etc", "a"),
             [1, 2], {"id": 8, "key": "a"}]
    text = b"\n".join(orjson.dumps(r) for r in lines) + b'\n{"id": "9", "key": "a", "conv'  # a torn last line
    (tmp_path / "i.jsonl").write_bytes(text)
    out = tmp_path / "out"
    for fmt in FORMATS:
        s = run_export(str(tmp_path / "i.jsonl"), [str(tmp_path / "s")], str(out / fmt), ExportOptions(to=fmt, progress=False))
        assert s["rows"] == 1, fmt  # id 1; id 3's key climbs out of its folder (the record stream rejects it: unsafe_key)
        image = {k: v for k, v in s["rejected"].items() if k in ("corrupt_image", "truncated_image")}
        assert sum(image.values()) == 1, fmt  # the cut jpeg
        assert s["rejected"] == {**image, "bad_row": 3, "broken_tar": 1, "duplicate_id": 1, "missing_image": 2, "unknown_shard": 1,
                                 "unsafe_key": 1}
        assert sum(s["rejected"].values()) + s["rows"] == s["instructions"] == 11
        rejects = [orjson.loads(x) for x in (out / fmt / "rejects.jsonl").read_bytes().splitlines()]
        assert len(rejects) == 10
    assert not (tmp_path / "escape.jpg").exists() and not list(tmp_path.rglob("escape.jpg"))
    for p in out.rglob("*"):
        assert p.resolve().is_relative_to(out.resolve())
    data = json.loads((out / "llava" / "llava.json").read_text())
    assert [e["id"] for e in data] == ["1"] and all("/" not in e["image"].split("/", 2)[2] for e in data)


def test_nothing_written_exits_1_with_one_line(tmp_path):
    (tmp_path / "s").mkdir()
    _tar(tmp_path / "s" / "x.tar", {"a.jpg": _jpeg()})
    (tmp_path / "i.jsonl").write_bytes(orjson.dumps(_row("1", "x", "missing")) + b"\n")
    p = run_cli("export", tmp_path / "i.jsonl", "--shards", tmp_path / "s", "--to", "llava", "--out", tmp_path / "o", check=False)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1].startswith("vlmtool: error: export: no row written (missing_image: 1)")
    with pytest.raises(UsageError, match="pip install 'vlmtool\\[export\\]'"):
        import unittest.mock

        with unittest.mock.patch.dict(sys.modules, {"pyarrow": None}):
            run_export(str(tmp_path / "i.jsonl"), [str(tmp_path / "s")], str(tmp_path / "o2"), ExportOptions(to="hf"))
    with pytest.raises(JobFailed):
        run_export(str(tmp_path / "i.jsonl"), [str(tmp_path / "s")], str(tmp_path / "o3"), ExportOptions(progress=False))


def test_hf_max_shard_size_splits_a_shards_parquet(synth_out, tmp_path):
    import datasets

    s = run_export(str(synth_out), [str(FIXTURES / "shapes")], str(tmp_path / "o"),
                   ExportOptions(to="hf", max_shard_size="1KB", progress=False))
    files = sorted((tmp_path / "o" / "data").glob("*.parquet"))
    assert len(files) > 2 and {f.name.rsplit("-", 1)[0] for f in files} == {"00000", "00001"}
    assert len(datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")) == s["rows"]


# ---------------------------------------------------------------------------------- kill and resume


def _outputs(out: Path) -> dict:
    skip = {"_done", "_state", "_job.json", "manifest.json"}
    return {str(p.relative_to(out)): sha(p.read_bytes()) for p in sorted(out.rglob("*"))
            if p.is_file() and p.relative_to(out).parts[0] not in skip and not p.name.startswith(".lock")}


@pytest.fixture(scope="module")
def kill_world(tmp_path_factory):
    from vlmtool.world import make_world

    root = tmp_path_factory.mktemp("killw")
    make_world(root / "w", samples=80, shard_size=8, seed=5, sizes="small", progress=False)
    run_cli("synth", root / "w", "--out", root / "syn", "--teacher", "captions", "--tasks", "conversation=1,negative=1", "--no-progress")
    return root / "w", root / "syn" / "instructions.jsonl"


@pytest.mark.slow  # several CLI processes per format
@pytest.mark.parametrize("fmt", FORMATS)
def test_sigkill_mid_export_then_rerun_gives_the_same_bytes(kill_world, fmt, tmp_path):
    world, ins = kill_world
    # Each shard arrives through a slow pipe, so the kill lands mid-job.
    shards = "\n".join(f"pipe:sleep 0.3; cat {p}" for p in sorted(world.glob("*.tar")))
    whole = tmp_path / "whole"
    run_cli("export", ins, "--shards", "-", "--to", fmt, "--out", whole, "--no-progress", input=shards)
    job = tmp_path / "job"
    cmd = [sys.executable, "-m", "vlmtool", "export", str(ins), "--shards", "-", "--to", fmt, "--out", str(job), "--no-progress"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    proc.stdin.write(shards.encode())
    proc.stdin.close()
    deadline = time.time() + 60
    while len(list((job / "_done").glob("*.json"))) < 3 and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list((job / "_done").glob("*.json")))
    assert 3 <= done < 10 and not (job / "manifest.json").exists()
    s = json_out(run_cli("export", ins, "--shards", "-", "--to", fmt, "--out", job, "--no-progress", "--json", input=shards))
    assert s["complete"] and s["this_run"]["shards"] == 10 - done
    assert _outputs(job) == _outputs(whole)


def test_shards_given_as_the_shells_list_after_one_flag(synth_out, tmp_path):
    tars = sorted(str(p) for p in (FIXTURES / "shapes").glob("*.tar"))
    s = json_out(run_cli("export", synth_out, "--shards", *tars, "--to", "wds", "--out", tmp_path / "o", "--json", "--no-progress"))
    assert s["shards"] == 2 and s["rows"] == len(instructions(synth_out))
