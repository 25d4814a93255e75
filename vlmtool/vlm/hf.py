"""Any transformers causal LM in place of the bundled one (`lm = "hf:PATH_OR_ID"`).

`HFCausalLM` wraps an `AutoModelForCausalLM` behind the bundled LM's call (inputs_embeds in,
logits and cache out, block hooks after each decoder layer for xattn); `HFTokenizer` wraps its
`AutoTokenizer` behind the chat-template interface, using the model's own chat template
(`apply_chat_template`) when it has one. transformers is imported only here, lazily.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
from torch import nn

from vlmtool.errors import UsageError
from vlmtool.vlm.tokenizer import IMAGE, IMAGE_NEWLINE, ChatEncoding, ChatTokenizer

# end-of-turn markers of common chat templates (ChatML/Qwen/SmolLM2, Llama-3, Phi-3, Gemma)
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
# used when the tokenizer has no chat template of its own
FALLBACK_ROLES = {"system": "### System:\n", "user": "### User:\n", "assistant": "### Assistant:\n"}


def transformers():
    try:
        import transformers as tf
    except ImportError:
        raise UsageError("lm 'hf:...' needs transformers: pip install 'vlmtool[hf]'") from None
    return tf


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


class HFCausalLM(nn.Module):
    """A transformers causal LM with the bundled LM's interface."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        c = model.config
        self.d_model, self.n_layers = c.hidden_size, c.num_hidden_layers
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        self.max_seq = getattr(c, "max_position_embeddings", None) or 1 << 20
        self._hook = None
        # transformers 5 renamed the forward's `past_key_values` to `cache`
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        # transformers >= 4.50 names it logits_to_keep, 4.45-4.49 num_logits_to_keep; a model with neither is sliced after
        self._keep_arg = next((a for a in ("logits_to_keep", "num_logits_to_keep") if a in params), None)
        layers = self._decoder_layers()
        self.supports_block_hooks = layers is not None
        for i, layer in enumerate(layers or []):
            layer.register_forward_hook(partial(self._after_layer, i))

    def sizes(self) -> dict:
        """The VLMConfig fields this model fixes."""
        c = self.model.config
        heads = c.num_attention_heads
        return {"vocab_size": self.vocab_size, "d_model": self.d_model, "n_layers": self.n_layers, "n_heads": heads,
                "n_kv_heads": getattr(c, "num_key_value_heads", None) or heads,
                "ffn_hidden": getattr(c, "intermediate_size", 0) or 0, "max_seq": min(self.max_seq, 1 << 20),
                "tie_embeddings": bool(getattr(c, "tie_word_embeddings", False))}

    def _decoder_layers(self):
        for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
            m = self.model
            for part in path.split("."):
                m = getattr(m, part, None)
            if isinstance(m, nn.ModuleList):
                return m
        return None

    def _after_layer(self, i, module, args, output):
        if self._hook is None:
            return None
        if isinstance(output, tuple):
            return (self._hook(i, output[0]), *output[1:])
        return self._hook(i, output)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, T] -> [B, T, D]"""
        return self.model.get_input_embeddings()(ids)

    def forward(self, inputs_embeds, attention_mask=None, position_ids=None, cache=None, use_cache=False,
                block_hook=None, logits_to_keep: int = 0):
        """inputs_embeds [B, T, D] -> (logits [B, T, V], or of the last `logits_to_keep` positions
        when it is not 0; cache: transformers' past_key_values)."""
        self._hook = block_hook
        keep = {self._keep_arg: logits_to_keep} if logits_to_keep and self._keep_arg else {}
        try:
            out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=use_cache, **{self._cache_arg: cache}, **keep)
        finally:
            self._hook = None
        logits = out.logits[:, -logits_to_keep:] if logits_to_keep else out.logits
        if not use_cache:
            return logits, None
        new = getattr(out, "cache", None)
        return logits, new if new is not None else out.past_key_values


def load_hf_lm(source: str | Path, weights: bool = True) -> HFCausalLM:
    """An `AutoModelForCausalLM` from a folder or hub id, in fp32: with its weights, or (weights=False,
    for a checkpoint that stores them itself) built from its config alone."""
    tf = transformers()
    try:
        if weights:
            model = tf.AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32)
        else:
            model = tf.AutoModelForCausalLM.from_config(tf.AutoConfig.from_pretrained(str(source)), dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"lm hf:{source}: cannot load a causal LM ({_first_line(e)})") from None
    return HFCausalLM(model)


class HFTokenizer(ChatTokenizer):
    """A transformers tokenizer (fast, for character offsets) with `<image>` and `<image_newline>`
    added as special tokens. Their ids lie past the model's vocabulary; the model never embeds
    them (the slots are overwritten) and never predicts them."""

    def __init__(self, tok):
        if not getattr(tok, "is_fast", False):
            raise UsageError("lm hf:...: the tokenizer must be a fast tokenizer (tokenizer.json)")
        missing = [t for t in (IMAGE, IMAGE_NEWLINE) if t not in tok.get_vocab()]
        if missing:
            tok.add_tokens(missing, special_tokens=True)
        self.tok = tok
        self.image_id = tok.convert_tokens_to_ids(IMAGE)
        self.newline_id = tok.convert_tokens_to_ids(IMAGE_NEWLINE)
        self.eos_id = tok.eos_token_id
        self.bos_id = tok.bos_token_id
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (self.eos_id or 0)
        vocab = tok.get_vocab()
        self.stop_ids = sorted({vocab[t] for t in END_OF_TURN if t in vocab} | ({self.eos_id} if self.eos_id is not None else set()))
        self.has_template = bool(getattr(tok, "chat_template", None))

    @property
    def vocab_size(self) -> int:
        return len(self.tok)

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        if self.has_template:
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        eos = self.tok.eos_token or ""
        text = (self.tok.bos_token or "") + "".join(
            FALLBACK_ROLES[m["role"]] + m["content"] + (eos if m["role"] == "assistant" else "") + "\n" for m in messages)
        return text + (FALLBACK_ROLES["assistant"] if add_generation_prompt else "")

    def _tokenize(self, text: str):
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return enc["input_ids"], enc["offset_mapping"]

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def encode_text(self, text: str) -> ChatEncoding:
        """A stage-0 sample: [bos] TEXT [eos], every token trained on."""
        ids = ([self.bos_id] if self.bos_id is not None else []) + self.encode(text) + ([self.eos_id] if self.eos_id is not None else [])
        return ChatEncoding(ids, list(ids))

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special)

    def save(self, folder: str | Path) -> None:
        """The tokenizer's files (tokenizer.json, tokenizer_config.json, ...) into `folder`."""
        self.tok.save_pretrained(str(folder))

    @classmethod
    def load(cls, source: str | Path) -> HFTokenizer:
        tf = transformers()
        try:
            tok = tf.AutoTokenizer.from_pretrained(str(source))
        except (OSError, ValueError, KeyError) as e:
            raise UsageError(f"lm hf:{source}: cannot load its tokenizer ({_first_line(e)})") from None
        return cls(tok)
