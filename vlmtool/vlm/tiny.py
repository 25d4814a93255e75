"""Tiny models for tests and the demo: a small config, a tokenizer trained on a built-in corpus,
and a randomly initialised transformers Llama saved to a folder (the offline stand-in for
`--lm hf:HuggingFaceTB/SmolLM2-135M`). Nothing here downloads anything."""

from __future__ import annotations

import itertools
from pathlib import Path

from vlmtool.vlm.config import VLMConfig

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("cube", "ball", "triangle", "square", "star", "ring")
RELATIONS = ("left of", "right of", "above", "below")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_corpus() -> list[str]:
    """A few hundred short sentences about coloured shapes (questions and answers)."""
    out = []
    for (c1, s1), (c2, s2), rel in itertools.product(zip(COLOURS, SHAPES), zip(COLOURS[::-1], SHAPES[1:] + SHAPES[:1]), RELATIONS):
        out.append(f"A {c1} {s1} is {rel} a {c2} {s2}.")
        out.append(f"What colour is the {s1}? The {s1} is {c1}.")
        out.append(f"Is there a {c2} {s2} in the image? Yes, there is a {c2} {s2}.")
    return out


def tiny_config(**changes) -> VLMConfig:
    """A VLM config small enough for a CPU test (d_model 64, 2 layers)."""
    base = {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "max_seq": 256,
            "d_vision": 32, "patch_size": 8, "image_size": 32}
    return VLMConfig(**{**base, **changes})


def tiny_tokenizer(vocab_size: int = 512):
    """A `BundledTokenizer` trained on `tiny_corpus()`."""
    from vlmtool.vlm.tokenizer import train_tokenizer

    return train_tokenizer(tiny_corpus(), vocab_size=vocab_size)


def save_tiny_llama(folder: str | Path, chat_template: str | None = CHATML, hidden: int = 64, layers: int = 2,
                    seed: int = 0) -> Path:
    """A randomly initialised `LlamaForCausalLM` and its fast tokenizer (byte-level BPE with ChatML
    markers, trained on the tiny corpus) saved to `folder`; loadable as `lm="hf:FOLDER"`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    specials = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(tiny_corpus(), trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    if chat_template:
        tok.chat_template = chat_template
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder
