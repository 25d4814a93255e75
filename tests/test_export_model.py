"""`vlmtool export-model`: transformers' LLaVA computes what `vlmtool infer` computes (logits
within 1e-3, the same greedy answers) on real photos and on shapes, for the bundled LM and for an
hf Llama; its processor reproduces open_clip's eval transform; what LLaVA cannot express is
refused with one line, before anything is written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_train import cli
from test_train_data import (  # noqa: F401 (one_thread: autouse)
    make_tower_features,
    make_instructions,
    one_thread,
    tiny_opts,
)

pytest.importorskip("transformers")

QUESTIONS = ["What colour is the cube?", "Is there a ball in the image?"]


def photos() -> dict:
    """Real photos shipped with matplotlib, and shapes from the synthetic world."""
    from matplotlib import cbook

    from vlmtool.world import make_world

    grace = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")  # 512x600
    out = {"present": Image.open(cbook.get_sample_data("Minduka_Present_Blue_Pack.png")).convert("RGB"),
           "grace_square": grace.crop((0, 40, 512, 552)), "grace_tall": grace.crop((0, 0, 512, 560))}
    return out


def shapes(tmp_path) -> dict:
    from conftest import FIXTURES

    from vlmtool.core.records import Reject, iter_samples
    from vlmtool.core.shards import expand_inputs, shard_refs

    out = {}
    for ref in shard_refs(expand_inputs([str(FIXTURES / "shapes")])):
        for s in iter_samples(ref):
            if not isinstance(s, Reject) and len(out) < 2:
                try:
                    out[f"shape_{s.key}"] = s.load_image().convert("RGB")
                except Exception:
                    continue
    return out


def train_checkpoint(root, **kw):
    from vlmtool.vlm.train import run_train

    feats = make_tower_features(root / "feats")
    ins = make_instructions(root / "ins.jsonl", feats)
    run_train([str(feats)], str(root / "ck"), tiny_opts(stage=2, instructions=str(ins), steps=3, lr=3e-3, **kw))
    return root / "ck"


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    ck = train_checkpoint(root)
    code, err = cli("export-model", "--checkpoint", ck, "--out", root / "hf")
    assert code == 0, err
    return ck, root / "hf"


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory):
    from vlmtool.vlm.tiny import save_tiny_llama

    root = tmp_path_factory.mktemp("export-hf")
    llama = save_tiny_llama(root / "llama")
    ck = train_checkpoint(root, lm=f"hf:{llama}")
    code, err = cli("export-model", "--checkpoint", ck, "--out", root / "hf")
    assert code == 0, err
    return ck, root / "hf"


def load_hf(folder, **kw):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(str(folder)).eval(), AutoProcessor.from_pretrained(str(folder), **kw)


def hf_inputs(proc, image, question):
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = proc.apply_chat_template(msgs, add_generation_prompt=True)
    return prompt, proc(images=image, text=prompt, return_tensors="pt")


def compare(ck, folder, images: dict):
    """For every image and question: vlmtool's and transformers' logits and greedy answers."""
    from vlmtool.vlm.infer import load_answerer

    ans = load_answerer(ck, "cpu", batch_size=1)
    model, proc = load_hf(folder, backend="pil")  # PIL's resize, as open_clip's (the default backend: within 1/255)
    for name, img in images.items():
        for q in QUESTIONS:
            ours = ans.inputs([img], [q])
            _, theirs = hf_inputs(proc, img, q)
            assert theirs["input_ids"].tolist() == ours["input_ids"].tolist(), name
            with torch.no_grad():
                a = ans.model(input_ids=ours["input_ids"], attention_mask=ours["attention_mask"], visual=ours["visual"],
                              visual_mask=ours["visual_mask"]).logits
                b = model(**theirs).logits[..., : a.shape[-1]]
            rel = ((a - b).abs().max() / a.abs().max()).item()
            assert rel < 1e-3, (name, q, rel)
            want = ans.answer([img], [q], max_new_tokens=12)[0]
            with torch.no_grad():
                gen = model.generate(**theirs, max_new_tokens=12, do_sample=False)
            got = proc.tokenizer.decode(gen[0, theirs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
            assert got == want, (name, q)


def test_transformers_llava_matches_vlmtool_infer_bundled_lm(bundled, tmp_path):
    ck, folder = bundled
    compare(ck, folder, {**photos(), **shapes(tmp_path)})


def test_transformers_llava_matches_vlmtool_infer_hf_llama(hf_llama, tmp_path):
    ck, folder = hf_llama
    compare(ck, folder, {**photos(), **shapes(tmp_path)})


def test_the_folder_loads_without_vlmtool_and_writes_vlmtools_prompt(bundled, hf_llama):
    import subprocess
    import sys

    for ck, folder in (bundled, hf_llama):
        code = ("import sys, json; from transformers import AutoProcessor, LlavaForConditionalGeneration as L; "
                f"m = L.from_pretrained({str(folder)!r}); p = AutoProcessor.from_pretrained({str(folder)!r}); "
                "msgs = [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': 'What is it?'}]}]; "
                "print(json.dumps([p.apply_chat_template(msgs, add_generation_prompt=True), p.tokenizer.chat_template == p.chat_template, "
                "any(k.startswith('vlmtool') for k in sys.modules)]))")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=folder, timeout=120)
        assert r.returncode == 0, r.stderr
        prompt, same, imported = json.loads(r.stdout.splitlines()[-1])
        from vlmtool.vlm.checkpoint import load_checkpoint

        tok = load_checkpoint(ck).tokenizer
        assert prompt == tok.render([{"role": "user", "content": "<image>\nWhat is it?"}], add_generation_prompt=True)
        assert same and not imported
        for name in ("tokenizer_config.json", "processor_config.json"):  # where transformers 4.x reads the template
            assert json.loads((folder / name).read_text())["chat_template"] == (folder / "chat_template.jinja").read_text()


def test_the_template_renders_conversations_as_vlmtool_does(bundled, hf_llama):
    from transformers import AutoProcessor

    from vlmtool.vlm.checkpoint import load_checkpoint

    for ck, folder in (bundled, hf_llama):
        tok, proc = load_checkpoint(ck).tokenizer, AutoProcessor.from_pretrained(str(folder))
        std = [{"role": "system", "content": "Be brief."},
               {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the cube?"}]},
               {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
               {"role": "user", "content": "And the ball?"}]
        plain = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "<image>\nWhat colour is the cube?"},
                 {"role": "assistant", "content": "Red."}, {"role": "user", "content": "And the ball?"}]
        for gen in (True, False):
            assert proc.apply_chat_template(std, add_generation_prompt=gen) == tok.render(plain, add_generation_prompt=gen)


def test_the_image_processor_reproduces_open_clips_eval_transform(bundled, tmp_path):
    """Within 0.005 per pixel (in 0..1 pixel units): PIL backend exactly, the default torchvision
    backend within one grey level. Known difference: transformers centre-crops at floor(margin / 2),
    torchvision (open_clip) at round(margin / 2) half to even, so where the resized long side exceeds
    the crop by 3 mod 4 pixels the crop starts one pixel apart (grace_hopper.jpg at 64 px: 75 - 64 = 11)."""
    from matplotlib import cbook
    from transformers import AutoProcessor

    from vlmtool.vlm.checkpoint import load_checkpoint
    from vlmtool.vlm.infer import load_tower

    ck, folder = bundled
    clip = load_tower(load_checkpoint(ck).tower)
    std = torch.tensor(clip.preprocess.std)[:, None, None]
    for backend, tol in (("pil", 1e-6), (None, 0.005)):
        proc = AutoProcessor.from_pretrained(str(folder), **({"backend": backend} if backend else {}))
        for name, img in {**photos(), **shapes(tmp_path)}.items():
            theirs = proc.image_processor(images=img, return_tensors="pt")["pixel_values"][0]
            assert ((theirs - clip.transform(img)).abs() * std).max() < tol, (backend, name)
    grace = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    proc = AutoProcessor.from_pretrained(str(folder), backend="pil")
    theirs = proc.image_processor(images=grace, return_tensors="pt")["pixel_values"][0]
    resized = grace.resize((64, 75), Image.Resampling.BICUBIC)  # the shortest side to 64, as both do
    mean = torch.tensor(clip.preprocess.mean)[:, None, None]
    at = {top: (torch.from_numpy(np.asarray(resized.crop((0, top, 64, top + 64)), dtype=np.float32) / 255).permute(2, 0, 1) - mean) / std
          for top in (5, 6)}
    assert torch.allclose(clip.transform(grace), at[6], atol=1e-5) and torch.allclose(theirs, at[5], atol=1e-5)


def _checkpoint(root, connector="mlp", tower=None):
    from vlmtool.vlm.checkpoint import save_checkpoint
    from vlmtool.vlm.model import new_model
    from vlmtool.vlm.tiny import tiny_config, tiny_tokenizer

    torch.manual_seed(0)
    model, tok = new_model(tiny_config(connector=connector, d_vision=128), tiny_tokenizer())
    return save_checkpoint(root, model, tok, tower=tower)


@pytest.mark.parametrize("case,why", [
    ("xattn", "the xattn connector (gated cross-attention between LM blocks) has no LLaVA equivalent"),
    ("native", "the native connector (raw pixel patches with no vision tower) has no LLaVA equivalent"),
    ("resnet", "the vision tower is a ModifiedResNet (a ResNet or timm tower)"),
    ("anyres", "the checkpoint was trained on AnyRes features (llava-next: tiles and row newlines)"),
])
def test_what_llava_cannot_express_is_refused_in_one_line_before_writing(tmp_path, case, why):
    vit = {"architecture": "tiny-clip", "pretrained": "random", "layer": -2, "cls": False}
    tower = {"resnet": {**vit, "architecture": "tiny-rn-clip"}, "anyres": {**vit, "anyres": "llava-next"}}.get(case, vit)
    ck = _checkpoint(tmp_path / "ck", connector=case if case in ("xattn", "native") else "mlp", tower=tower)
    code, err = cli("export-model", "-c", ck, "-o", tmp_path / "hf")
    assert code == 2 and len(err.strip().splitlines()) == 1 and why in err, err
    assert not (tmp_path / "hf").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
