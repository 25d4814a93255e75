"""The VLM's architecture as data: one frozen dataclass, saved as `config.json` in a checkpoint.

Sizes of the bundled language model, the width of the visual features it reads (`d_vision`, the
feature width D of the feature shards), the connector recipe and the language model source
(`bundled` or `hf:PATH_OR_ID`). With an hf LM the LM sizes are taken from the transformers model
when it is built (the saved config records them); the connector settings still apply.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from vlmtool.errors import UsageError

_ZERO_OK = ("ffn_hidden", "image_token_id", "image_newline_id")
_INT_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden", "max_seq", "d_vision",
               "xattn_every", "patch_size", "image_size", "image_token_id", "image_newline_id")


@dataclass(frozen=True)
class VLMConfig:
    # bundled language model (Llama-style: RMSNorm, RoPE, SwiGLU, grouped-query attention)
    vocab_size: int = 4096
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    ffn_hidden: int = 0  # 0: SwiGLU's 8/3 * d_model rounded up to 64 (Llama, "LLaMA" paper sec. 2.2)
    max_seq: int = 2048
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    # vision side and connector
    d_vision: int = 768  # width D of the feature shards' vectors (CLIP ViT-L/14: 1024, ViT-B: 768)
    connector: str = "mlp"  # a name in vlm.connectors.CONNECTORS: mlp (LLaVA-1.5), xattn (Flamingo), native (Fuyu)
    xattn_every: int = 1  # xattn: a gated cross-attention block after every k-th LM block
    patch_size: int = 16  # native: square pixel patches, embedded straight into the LM width
    image_size: int = 224  # native: the size images are resized to before patching
    lm: str = "bundled"  # "bundled" or "hf:PATH_OR_ID"
    # the tokenizer's ids of the visual-slot and row-newline placeholders (the bundled tokenizer's
    # are 6 and 7; `vlm.model.new_model` sets them from whichever tokenizer it is given)
    image_token_id: int = 6
    image_newline_id: int = 7

    def __post_init__(self):
        for name in _INT_FIELDS:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0 or (v == 0 and name not in _ZERO_OK):
                raise UsageError(f"VLM config: {name} must be a positive integer, got {v!r}")
        if self.ffn_hidden == 0:
            object.__setattr__(self, "ffn_hidden", -(-(8 * self.d_model // 3) // 64) * 64)
        if self.d_model % self.n_heads:
            raise UsageError(f"VLM config: d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise UsageError(f"VLM config: head size {self.d_model // self.n_heads} must be even for rotary positions")
        if self.n_heads % self.n_kv_heads:
            raise UsageError(f"VLM config: n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        from vlmtool.vlm.connectors import connector_class

        connector_class(self.connector).check_config(self)
        if self.image_size % self.patch_size:
            raise UsageError(f"VLM config: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if not (self.lm == "bundled" or (self.lm.startswith("hf:") and len(self.lm) > 3)):
            raise UsageError(f"VLM config: lm must be 'bundled' or 'hf:PATH_OR_ID', got {self.lm!r}")
        if not self.rope_theta > 0 or not self.norm_eps > 0:
            raise UsageError("VLM config: rope_theta and norm_eps must be positive")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def is_hf(self) -> bool:
        return self.lm.startswith("hf:")

    @property
    def hf_source(self) -> str:
        return self.lm[3:]

    def replace(self, **changes) -> VLMConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        """The config as JSON text; with `path`, also written there (atomically)."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        if path is not None:
            from vlmtool.core.shards import atomic_write

            atomic_write(path, text.encode())
        return text

    @classmethod
    def from_dict(cls, d: dict) -> VLMConfig:
        if not isinstance(d, dict):
            raise UsageError("VLM config: expected a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UsageError(f"VLM config: unknown field(s) {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> VLMConfig:
        """Read a config from a `config.json` path or from JSON text."""
        p = Path(path_or_text) if not str(path_or_text).lstrip().startswith("{") else None
        try:
            d = json.loads(p.read_text() if p is not None else str(path_or_text))
        except FileNotFoundError:
            raise UsageError(f"VLM config: {p} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UsageError(f"VLM config: {p or 'text'} is not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
        return cls.from_dict(d)
