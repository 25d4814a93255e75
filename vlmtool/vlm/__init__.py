"""The bundled LLaVA-style VLM: config, language model, tokenizer and chat template, connectors,
generation and checkpoint folders. Importing this package imports torch only when a name that
needs it is used.

    from vlmtool.vlm import VLMConfig, train_tokenizer, new_model, collate, save_checkpoint, load_checkpoint
"""

from __future__ import annotations

import importlib

_NAMES = {
    "VLMConfig": "config", "CONNECTORS": "config",
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
