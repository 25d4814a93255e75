"""The three connector recipes: how an image reaches the language model.

- `mlp` (LLaVA-1.5, haotian-liu/LLaVA llava/model/multimodal_projector/builder.py `mlp2x_gelu`):
  Linear(D_v, D_lm) -> GELU -> Linear(D_lm, D_lm) on each visual feature; the outputs fill the
  visual slots of the sequence.
- `xattn` (Flamingo, Alayrac et al. 2022, sec. 2.2 and fig. 4): gated cross-attention blocks after
  every k-th LM block; the text attends to the visual features, each output scaled by tanh(alpha)
  with alpha = 0 at initialisation, so the LM is exactly unchanged until training moves alpha.
  The image takes no slots in the sequence.
- `native` (Fuyu-8B, adept.ai/blog/fuyu-8b): no vision tower; raw pixel patches (uint8) are
  normalised and linearly embedded straight into the LM width, one slot per patch.

The slot connectors (`mlp`, `native`) also own `image_newline` [D_lm], the learned vector put in
the row-newline slots (LLaVA-NeXT, llava_arch.py `image_newline`; Fuyu's row-newline token).

The registry (`CONNECTORS`, `connector_class`): each connector class declares what it reads
(`reads`: "features" from feature shards, or "pixels" from image shards), whether the image takes
slots in the LM's sequence, its config fields, its checks, its visual-token count and its cost
model (KV-cache bytes). Nothing outside this module compares a connector's name: adding one is a
class here and its line in `CONNECTORS`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vlmtool.errors import UsageError


KV_DTYPE = "bf16"


def lm_sizes(cfg: dict) -> tuple[int, int, int, int] | None:
    """(layers, heads, kv_heads, head_dim) of a checkpoint's config.json, when it says."""
    layers, heads, kv_heads, d = cfg.get("n_layers"), cfg.get("n_heads"), cfg.get("n_kv_heads"), cfg.get("d_model")
    if not all(isinstance(v, int) and v > 0 for v in (layers, heads, kv_heads, d)):
        return None
    return layers, heads, kv_heads, d // heads


class Connector:
    """What every connector declares (class attributes and classmethods, read without building
    one); the defaults are a slot connector on vision-tower features."""

    name = ""
    reads = "features"  # "features": a tower's rows from feature shards; "pixels": image shards
    slots = True  # the image takes positions (slots) in the LM's sequence
    packs = False  # train --pack can put each sample's visual slots in its row
    llava = ""  # why transformers' LLaVA cannot express it ("" when it can: export-model writes it)

    @classmethod
    def config_fields(cls, width: int | None, patch_size: int, image_size: int) -> dict:
        """The VLMConfig fields a new connector of this kind takes (`width`: the features')."""
        return {"connector": cls.name, **({"d_vision": width} if width else {})}

    @classmethod
    def check_config(cls, cfg) -> None:
        """Refuse a VLMConfig this connector cannot be built from (a UsageError)."""

    @classmethod
    def check_lm(cls, lm, cfg) -> None:
        """Refuse a language model this connector cannot attach to (a UsageError)."""

    @classmethod
    def visual_tokens(cls, cfg: dict, tower_tokens: int | None) -> int | None:
        """LM positions per image (from a checkpoint's config.json as a dict, and the tower's
        features per image when known); None when unknown."""
        return tower_tokens

    @classmethod
    def kv_cache_bytes(cls, cfg: dict, tower_tokens: int | None) -> int | None:
        """KV-cache bytes per image (budget.dataset.kv_cache_bytes, in KV_DTYPE): the visual
        positions' keys and values in every LM layer; None when the config does not say."""
        from vlmtool.budget.dataset import kv_cache_bytes

        t_v, sizes = cls.visual_tokens(cfg, tower_tokens), lm_sizes(cfg)
        if t_v is None or sizes is None:
            return None
        layers, heads, kv_heads, head_dim = sizes
        return kv_cache_bytes(t_v, layers, kv_heads, head_dim, KV_DTYPE)

    def hook(self, visual, visual_mask):
        """A `block_hook(i, h) -> h` for the LM's blocks; None: the image reaches the LM through its slots."""
        return None


class MLPConnector(Connector, nn.Module):
    name = "mlp"
    packs = True

    @classmethod
    def build(cls, cfg, d_model: int, n_heads: int, n_layers: int) -> MLPConnector:
        return cls(cfg.d_vision, d_model)

    def __init__(self, d_vision: int, d_model: int):
        super().__init__()
        self.d_vision = d_vision
        self.fc1 = nn.Linear(d_vision, d_model)
        self.fc2 = nn.Linear(d_model, d_model)
        # LLaVA-NeXT initialises image_newline as randn(D) / sqrt(D) (llava_arch.py)
        self.image_newline = nn.Parameter(torch.randn(d_model) / math.sqrt(d_model))

    def forward(self, visual: torch.Tensor) -> torch.Tensor:
        """visual [B, T_v, D_v] -> [B, T_v, D_lm]"""
        if visual.shape[-1] != self.d_vision:
            raise UsageError(f"visual features have width {visual.shape[-1]}, but the connector expects "
                             f"d_vision={self.d_vision}: use feature shards made with the same vision tower")
        return self.fc2(F.gelu(self.fc1(visual.to(self.fc1.weight.dtype))))


# Fuyu normalises pixels to [-1, 1]: (x / 255 - 0.5) / 0.5 (transformers FuyuImageProcessor defaults)
PIXEL_MEAN, PIXEL_STD = 0.5, 0.5


def grid_of(height: int, width: int, patch: int) -> tuple[int, int]:
    """(rows, cols) of square patches in an image of this size (a multiple of the patch size)."""
    if height % patch or width % patch or height <= 0 or width <= 0:
        raise UsageError(f"native connector: image size {width}x{height} is not a multiple of the patch size {patch}")
    return height // patch, width // patch


def patchify(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """pixels [B, C, H, W] -> patches [B, rows * cols, C * patch * patch], row-major (left to right,
    then top to bottom), each patch flattened channel-first."""
    B, C, H, W = pixels.shape
    R, Q = grid_of(H, W, patch)
    x = pixels.reshape(B, C, R, patch, Q, patch)  # [B, C, R, p, Q, p]
    x = x.permute(0, 2, 4, 1, 3, 5)  # [B, R, Q, C, p, p]
    return x.reshape(B, R * Q, C * patch * patch)


class NativeConnector(Connector, nn.Module):
    name = "native"
    reads = "pixels"
    llava = "raw pixel patches with no vision tower"

    @classmethod
    def build(cls, cfg, d_model: int, n_heads: int, n_layers: int) -> NativeConnector:
        return cls(cfg.patch_size, d_model)

    @classmethod
    def config_fields(cls, width: int | None, patch_size: int, image_size: int) -> dict:
        return {"connector": cls.name, "patch_size": patch_size, "image_size": image_size}

    @classmethod
    def visual_tokens(cls, cfg: dict, tower_tokens: int | None) -> int | None:
        """(image_size / patch_size)^2 patches plus a row-newline per row."""
        if not cfg.get("patch_size"):
            return tower_tokens
        rows = cfg.get("image_size", 0) // cfg["patch_size"]
        return rows * rows + rows

    def __init__(self, patch_size: int, d_model: int, channels: int = 3):
        super().__init__()
        self.patch_size, self.channels = patch_size, channels
        self.proj = nn.Linear(channels * patch_size * patch_size, d_model)
        self.image_newline = nn.Parameter(torch.randn(d_model) / math.sqrt(d_model))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, C, H, W] (uint8 0..255, or float already in 0..255) -> [B, R * Q, D_lm]"""
        if pixels.dim() != 4 or pixels.shape[1] != self.channels:
            raise UsageError(f"native connector: pixels must be [B, {self.channels}, H, W], got {list(pixels.shape)}")
        x = patchify(pixels, self.patch_size).to(self.proj.weight.dtype)  # [B, R*Q, C*p*p]
        x = (x / 255.0 - PIXEL_MEAN) / PIXEL_STD
        return self.proj(x)


class GatedCrossAttention(nn.Module):
    """Flamingo's GATED XATTN-DENSE block: h += tanh(a_attn) * xattn(LN(h), V);
    h += tanh(a_ffw) * FFW(LN(h)); both alphas start at 0."""

    def __init__(self, d_model: int, d_vision: int, n_heads: int, ffn_mult: int = 4):
        super().__init__()
        self.n_heads, self.dh = n_heads, d_model // n_heads
        self.norm = nn.LayerNorm(d_model)
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.kv = nn.Linear(d_vision, 2 * d_model, bias=False)
        self.o = nn.Linear(d_model, d_model, bias=False)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ffn_norm = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, ffn_mult * d_model), nn.GELU(), nn.Linear(ffn_mult * d_model, d_model))
        self.ffn_gate = nn.Parameter(torch.zeros(1))

    def forward(self, h: torch.Tensor, visual: torch.Tensor, visual_mask: torch.Tensor) -> torch.Tensor:
        """h [B, T, D_lm], visual [B, T_v, D_v], visual_mask [B, T_v] bool -> [B, T, D_lm].

        A row without any valid visual feature (a text-only sample in the batch) gets no
        cross-attention term."""
        B, T, D = h.shape
        q = self.q(self.norm(h)).view(B, T, self.n_heads, self.dh).transpose(1, 2)  # [B, H, T, Dh]
        k, v = self.kv(visual.to(h.dtype)).view(B, -1, 2, self.n_heads, self.dh).permute(2, 0, 3, 1, 4)  # [B, H, T_v, Dh]
        has = visual_mask.any(dim=1)  # [B]
        mask = (visual_mask | ~has[:, None])[:, None, None, :]  # [B, 1, 1, T_v]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, T, Dh]
        y = self.o(y.transpose(1, 2).reshape(B, T, D)) * has[:, None, None].to(h.dtype)
        h = h + torch.tanh(self.attn_gate).to(h.dtype) * y
        return h + torch.tanh(self.ffn_gate).to(h.dtype) * self.ffn(self.ffn_norm(h))


class XAttnConnector(Connector, nn.Module):
    name = "xattn"
    slots = False
    llava = "gated cross-attention between LM blocks"

    @classmethod
    def build(cls, cfg, d_model: int, n_heads: int, n_layers: int) -> XAttnConnector:
        if d_model % n_heads:
            raise UsageError(f"xattn connector: LM width {d_model} is not divisible by its {n_heads} heads")
        return cls(cfg.d_vision, d_model, n_heads, n_layers, min(cfg.xattn_every, n_layers))

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.xattn_every > cfg.n_layers:
            raise UsageError(f"VLM config: xattn_every {cfg.xattn_every} exceeds n_layers {cfg.n_layers}")

    @classmethod
    def check_lm(cls, lm, cfg) -> None:
        if not getattr(lm, "supports_block_hooks", True):
            raise UsageError(f"xattn connector: cannot find the decoder layers of {cfg.lm}")

    @classmethod
    def visual_tokens(cls, cfg: dict, tower_tokens: int | None) -> int | None:
        """No visual position in the LM's sequence (None, as the cost, where the sizes are unknown)."""
        return None if tower_tokens is None or lm_sizes(cfg) is None else 0

    @classmethod
    def kv_cache_bytes(cls, cfg: dict, tower_tokens: int | None) -> int | None:
        """Flamingo: K and V of the features in each cross-attention layer (all heads)."""
        from vlmtool.budget.dataset import kv_cache_bytes

        sizes = lm_sizes(cfg)
        if tower_tokens is None or sizes is None:
            return None
        layers, heads, _, head_dim = sizes
        return kv_cache_bytes(tower_tokens, layers // max(1, cfg.get("xattn_every", 1)), heads, head_dim, KV_DTYPE)

    def __init__(self, d_vision: int, d_model: int, n_heads: int, n_layers: int, every: int):
        super().__init__()
        self.d_vision = d_vision
        self.layers = [i for i in range(n_layers) if (i + 1) % every == 0]  # after LM block i
        self.blocks = nn.ModuleList(GatedCrossAttention(d_model, d_vision, n_heads) for _ in self.layers)

    def hook(self, visual: torch.Tensor, visual_mask: torch.Tensor | None):
        """A `block_hook(i, h) -> h` for the LM that applies the gated block after LM block i.
        visual [B, T_v, D_v]; visual_mask [B, T_v] (None: all valid)."""
        if visual.shape[-1] != self.d_vision:
            raise UsageError(f"visual features have width {visual.shape[-1]}, but the connector expects "
                             f"d_vision={self.d_vision}: use feature shards made with the same vision tower")
        if visual_mask is None:
            visual_mask = torch.ones(visual.shape[:2], dtype=torch.bool, device=visual.device)
        by_layer = dict(zip(self.layers, self.blocks))

        def block_hook(i: int, h: torch.Tensor) -> torch.Tensor:
            block = by_layer.get(i)
            return h if block is None else block(h, visual, visual_mask.bool())

        return block_hook


CONNECTORS: dict[str, type[Connector]] = {c.name: c for c in (MLPConnector, XAttnConnector, NativeConnector)}


def connector_class(name: str | None, what: str = "VLM config: connector") -> type[Connector]:
    """The registered connector of this name; a UsageError naming the known ones otherwise."""
    if name not in CONNECTORS:
        raise UsageError(f"{what} must be one of {', '.join(CONNECTORS)}, got {name!r}")
    return CONNECTORS[name]


def build_connector(cfg, d_model: int, n_heads: int, n_layers: int) -> nn.Module:
    """The connector `cfg.connector` names, sized for an LM of width d_model."""
    return connector_class(cfg.connector).build(cfg, d_model, n_heads, n_layers)
