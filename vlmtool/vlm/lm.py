"""The bundled decoder-only language model: RMSNorm, rotary positions, SwiGLU, grouped-query
attention through `scaled_dot_product_attention`, tied or untied embeddings, and a KV cache.

The grain is nanoVLM's models/language_model.py. The LM takes `inputs_embeds` (so a VLM can
splice visual vectors into the sequence) and an optional `block_hook(i, h) -> h` called after
block i (so Flamingo's gated cross-attention can sit between blocks without the LM knowing).

Every LM the VLM drives (this one, or a transformers model wrapped by `vlm.hf`) has the same call:
`lm(inputs_embeds, attention_mask=None, position_ids=None, cache=None, use_cache=False,
block_hook=None, logits_to_keep=0) -> (logits, cache)` plus `embed(ids)`, `d_model`, `vocab_size`,
`n_layers`; `logits_to_keep=1` (generation) runs the head on the last position only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vlmtool.errors import UsageError
from vlmtool.vlm.config import VLMConfig

BlockHook = Callable[[int, torch.Tensor], torch.Tensor]


class KVCache:
    """Keys and values of the positions seen so far, per layer: `k[i]`, `v[i]` are
    [B, H_kv, T_past, Dh]. `update` appends the new step's and returns the whole."""

    def __init__(self, n_layers: int):
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers

    def __len__(self) -> int:
        return 0 if self.k[0] is None else self.k[0].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k[layer] is not None:
            k = torch.cat([self.k[layer], k], dim=2)  # [B, H_kv, T_past + T, Dh]
            v = torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., D], normalised in fp32 and cast back."""
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


def rope_tables(head_dim: int, max_seq: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables [max_seq, head_dim] for rotate-half rotary embeddings (RoFormer; the layout
    of transformers' Llama, so the two LMs agree on what a position means)."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))  # [Dh/2]
    ang = torch.outer(torch.arange(max_seq, dtype=torch.float64), inv)  # [S, Dh/2]
    ang = torch.cat([ang, ang], dim=-1)  # [S, Dh]
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, Dh]; cos, sin [B, 1, T, Dh] -> [B, H, T, Dh]."""
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rot.float() * sin).to(x.dtype)


class Attention(nn.Module):
    """Grouped-query self-attention: n_heads query heads share n_kv_heads key/value heads."""

    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.dh = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q = nn.Linear(cfg.d_model, cfg.n_heads * self.dh, bias=False)
        self.k = nn.Linear(cfg.d_model, cfg.n_kv_heads * self.dh, bias=False)
        self.v = nn.Linear(cfg.d_model, cfg.n_kv_heads * self.dh, bias=False)
        self.o = nn.Linear(cfg.n_heads * self.dh, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, mask, cache: KVCache | None, layer: int) -> torch.Tensor:
        """x [B, T, D]; mask None (plain causal) or bool [B, 1, T, T_past + T] -> [B, T, D]."""
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_heads, self.dh).transpose(1, 2)  # [B, H, T, Dh]
        k = self.k(x).view(B, T, self.n_kv, self.dh).transpose(1, 2)  # [B, H_kv, T, Dh]
        v = self.v(x).view(B, T, self.n_kv, self.dh).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # [B, H_kv, T_past + T, Dh]
        # grouped-query heads read their shared K/V in place (enable_gqa): no repeated copies of K
        # and V forward, no reduction of their repeats backward (bench/train.py: 2% of a d256 step)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                           enable_gqa=self.n_kv != self.n_heads)  # [B, H, T, Dh]
        return self.o(y.transpose(1, 2).reshape(B, T, -1))


class SwiGLU(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(d, hidden, bias=False)
        self.up = nn.Linear(d, hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> [B, T, D]"""
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.ffn_hidden)

    def forward(self, x, cos, sin, mask, cache, layer):
        """[B, T, D] -> [B, T, D] (pre-norm residual)."""
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache, layer)
        return x + self.mlp(self.mlp_norm(x))


def attention_mask_4d(key_mask: torch.Tensor, past: int, T: int) -> torch.Tensor:
    """Causal mask with padding: key_mask [B, T_past + T] (1 real, 0 pad) -> bool [B, 1, T, T_past + T].

    A query may also always see itself, so a padded query's row is never empty (an all-False row
    would make SDPA return NaN); a padded query's output is never used."""
    Tk = key_mask.shape[1]
    qpos = torch.arange(past, past + T, device=key_mask.device)[:, None]  # [T, 1]
    kpos = torch.arange(Tk, device=key_mask.device)[None, :]  # [1, T_k]
    causal = kpos <= qpos  # [T, T_k]
    allowed = causal[None] & key_mask.bool()[:, None, :]  # [B, T, T_k]
    allowed = allowed | (kpos == qpos)[None]
    return allowed[:, None]


def segment_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """Block-diagonal causal mask of packed rows: segment_ids [B, T] (1, 2, ... per sample, 0
    padding) -> bool [B, 1, T, T]: a token sees the earlier tokens of its own sample only.
    Padding sees itself (never an empty row)."""
    T = segment_ids.shape[1]
    i = torch.arange(T, device=segment_ids.device)
    causal = i[None, :] <= i[:, None]  # [T, T]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # [B, T, T]
    return (same & causal)[:, None]


class BundledLM(nn.Module):
    """The bundled decoder-only LM, sized by a `VLMConfig`."""

    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.cfg = cfg
        self.d_model, self.vocab_size, self.n_layers, self.max_seq = cfg.d_model, cfg.vocab_size, cfg.n_layers, cfg.max_seq
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # [S, Dh]
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(_init_weights)
        if cfg.tie_embeddings:
            self.head.weight = self.tok_emb.weight

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, T] -> [B, T, D]"""
        return self.tok_emb(ids)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: KVCache | None = None, use_cache: bool = False,
                block_hook: BlockHook | None = None, logits_to_keep: int = 0) -> tuple[torch.Tensor, KVCache | None]:
        """inputs_embeds [B, T, D] -> (logits [B, T, V], or of the last `logits_to_keep` positions
        when it is not 0, as transformers' argument; cache); `hidden` says what the others mean."""
        h, cache = self.hidden(inputs_embeds, attention_mask, position_ids, cache, use_cache, block_hook)
        return self.head(h[:, -logits_to_keep:] if logits_to_keep else h), cache  # [B, T or logits_to_keep, V]

    def hidden(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
               position_ids: torch.Tensor | None = None, cache: KVCache | None = None, use_cache: bool = False,
               block_hook: BlockHook | None = None) -> tuple[torch.Tensor, KVCache | None]:
        """inputs_embeds [B, T, D] -> (the final norm's output [B, T, D], which `head` turns into
        the logits, cache): a caller that needs some positions' logits only applies the head to those.

        attention_mask [B, T_past + T] marks real tokens (1) and padding (0), or is a ready bool
        mask [B, 1, T, T_past + T] (True: may attend; packed rows' `segment_mask`); position_ids
        [B, T] default to T_past.. T_past + T - 1. With `use_cache` (or a `cache` given) the keys and
        values are kept for the next call."""
        B, T, _ = inputs_embeds.shape
        if cache is None and use_cache:
            cache = KVCache(self.n_layers)
        past = len(cache) if cache is not None else 0
        if past + T > self.max_seq:  # positions never exceed past + T - 1 (they count real tokens)
            raise UsageError(f"a sequence of {past + T} tokens exceeds the LM's max_seq {self.max_seq}")
        if position_ids is None:  # every row at the same positions: a slice of the tables, broadcast (no gather)
            cos, sin = self.rope_cos[past : past + T][None, None], self.rope_sin[past : past + T][None, None]  # [1, 1, T, Dh]
        else:
            cos, sin = self.rope_cos[position_ids][:, None], self.rope_sin[position_ids][:, None]  # [B, 1, T, Dh]
        mask = None
        if attention_mask is not None and attention_mask.dim() == 4:
            mask = attention_mask
        elif attention_mask is not None or past:
            km = attention_mask if attention_mask is not None else torch.ones(B, past + T, device=inputs_embeds.device)
            mask = attention_mask_4d(km, past, T)  # [B, 1, T, T_past + T]
        h = inputs_embeds
        for i, block in enumerate(self.blocks):
            h = block(h, cos, sin, mask, cache, i)  # [B, T, D]
            if block_hook is not None:
                h = block_hook(i, h)
        return self.norm(h), cache  # [B, T, D]


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)
