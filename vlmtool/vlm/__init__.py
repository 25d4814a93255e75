"""The bundled LLaVA-style VLM: config, language model, tokenizer and chat template, connectors,
generation and checkpoint folders. Names are imported lazily (torch only when needed).

    from vlmtool.vlm import VLMConfig, train_tokenizer, new_model, collate, save_checkpoint, load_checkpoint

    tok = train_tokenizer(texts, vocab_size=4096)               # byte-level BPE (or hf: its own)
    model, tok = new_model(VLMConfig(d_vision=D, connector="mlp"), tok)
    model.freeze(1)                                              # 0 LM | 1 connector | 2 both
    opt = torch.optim.AdamW(model.param_groups(weight_decay=0.0, lr=1e-3, lm_lr=2e-5))
    enc = tok.encode_chat(turns_from_record(row), n_visual=model.slot_count(T_v), newline_after=rows)
    batch = collate([enc, ...], tok.pad_id)                      # input_ids, labels, attention_mask [B, T]
    out = model(**batch, visual=feats, visual_mask=valid)        # feats [B, T_v, D], valid [B, T_v]
    out.loss.backward()
    ids = model.generate(prompt_ids, attention_mask, visual=feats, stop_ids=tok.stop_ids)
    save_checkpoint(dir, model, tok, tower=features_json["tower"], extra={"stage": 1})
    ck = load_checkpoint(dir)                                    # ck.model, ck.tokenizer, ck.tower, ck.extra
"""

from __future__ import annotations

import importlib

_NAMES = {
    "VLMConfig": "config", "CONNECTORS": "connectors",
    "ChatEncoding": "tokenizer", "ChatTokenizer": "tokenizer", "BundledTokenizer": "tokenizer",
    "train_tokenizer": "tokenizer", "collate": "tokenizer", "grid_newlines": "tokenizer", "turns_from_record": "tokenizer", "IGNORE": "tokenizer",
    "VLM": "model", "VLMOutput": "model", "new_model": "model", "STAGES": "model",
    "BundledLM": "lm", "KVCache": "lm",
    "HFTokenizer": "hf", "HFCausalLM": "hf",
    "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint", "Checkpoint": "checkpoint",
}
__all__ = list(_NAMES)


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module 'vlmtool.vlm' has no attribute {name!r}")
    return getattr(importlib.import_module(f"vlmtool.vlm.{_NAMES[name]}"), name)
