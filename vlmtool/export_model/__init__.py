"""`vlmtool export-model`: a checkpoint -> a folder transformers loads as LLaVA, with no vlmtool
import and no remote code:

    model = LlavaForConditionalGeneration.from_pretrained(HF_DIR)
    processor = AutoProcessor.from_pretrained(HF_DIR)

The folder holds config.json (LlavaConfig: CLIP vision config, the LM's config), model.safetensors,
generation_config.json (vlmtool's stop tokens; the image placeholders suppressed, as vlmtool's
generate does), the tokenizer with its Jinja chat template, and the processor (CLIPImageProcessor
settings, patch size, feature strategy). vLLM and SGLang serve such a folder as a LLaVA model.
`convert.py` holds the key mapping and what is refused; `template.py` the text side.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from vlmtool.errors import UsageError


def build(checkpoint: str | Path):
    """(LlavaForConditionalGeneration with the checkpoint's weights, LlavaProcessor, GenerationConfig)."""
    import torch
    from transformers import GenerationConfig, LlavaForConditionalGeneration

    from vlmtool.export_model import convert, template

    src = convert.open_source(checkpoint)
    tok = src.ck.tokenizer
    lm, head = convert.lm_weights(src)
    vocab = max(len(template.hf_tokenizer(src)), head.shape[0] if head is not None else 0,
                lm["language_model.embed_tokens.weight"].shape[0])
    convert.resize_vocab(lm, vocab)
    config = convert.llava_config(src, vocab)
    weights = {"model." + k: v for k, v in {**lm, **convert.connector_weights(src)}.items() if not k.startswith("lm_head.")}
    weights.update({k: v for k, v in lm.items() if k.startswith("lm_head.")})
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    want = model.state_dict()
    vprefix = "model.vision_tower." + ("vision_model." if any(k.startswith("model.vision_tower.vision_model.") for k in want) else "")
    weights.update({vprefix + k: v for k, v in convert.vision_weights(src.clip.model.visual).items()})
    if config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
    _load_strict(model, weights, want)
    model.eval()
    gen = GenerationConfig(bos_token_id=getattr(tok, "bos_id", None), eos_token_id=list(tok.stop_ids), pad_token_id=tok.pad_id,
                           suppress_tokens=[tok.image_id, tok.newline_id], do_sample=False)
    model.generation_config = gen
    return model, template.processor(src, config.vision_config), gen


def _load_strict(model, weights: dict, want: dict) -> None:
    bad = [f"{k}: {list(v.shape)} for {list(want[k].shape)}" for k, v in weights.items() if k in want and v.shape != want[k].shape]
    missing = sorted(k for k in want if k not in weights and not (k == "lm_head.weight" and model.config.tie_word_embeddings))
    extra = sorted(k for k in weights if k not in want)
    if bad or missing or extra:
        raise UsageError(f"export-model: the converted weights do not fit LLaVA (shape {bad[:2]}, missing {missing[:2]}, "
                         f"unexpected {extra[:2]})")
    model.load_state_dict(weights, strict=False)
    if model.config.tie_word_embeddings:
        model.tie_weights()


def _for_older_readers(folder: Path, proc) -> None:
    """transformers 5 keeps the chat template in chat_template.jinja (both the tokenizer and the
    processor load it); readers on transformers 4.x (vLLM and SGLang pin one) look in
    tokenizer_config.json and processor_config.json, and know a tokenizers-backed tokenizer as
    PreTrainedTokenizerFast, not 5.x's TokenizersBackend."""
    import json

    for name in ("tokenizer_config.json", "processor_config.json"):
        p = folder / name
        if p.is_file():
            d = json.loads(p.read_text())
            d["chat_template"] = proc.chat_template
            if d.get("tokenizer_class") == "TokenizersBackend":
                d["tokenizer_class"] = "PreTrainedTokenizerFast"
            p.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")


def export_model(checkpoint: str | Path, out: str | Path) -> dict:
    """Write the LLaVA folder `out` (refused when it exists and is not empty). The folder appears
    under its name only when complete. Returns a summary."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"export-model: --out {out} exists and is not empty; give a new folder")
    model, proc, _ = build(checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(str(tmp))
        proc.save_pretrained(str(tmp))
        _for_older_readers(tmp, proc)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    c = model.config
    return {"checkpoint": str(checkpoint), "out": str(out), "architecture": "LlavaForConditionalGeneration",
            "text_model": c.text_config.model_type, "vision_model": c.vision_config.model_type,
            "vision_feature_layer": c.vision_feature_layer, "vision_feature_select_strategy": c.vision_feature_select_strategy,
            "image_tokens": c.image_seq_length, "vocab_size": c.text_config.vocab_size,
            "parameters": sum(p.numel() for p in model.parameters())}
