"""A vlmtool checkpoint -> transformers' LLaVA (`LlavaForConditionalGeneration`, CLIP vision tower).

Key mapping, checked against transformers' models/llava/convert_llava_weights_to_hf.py and
models/clip/convert_clip_original_pytorch_to_hf.py, and against open_clip's
src/open_clip/transformer.py (VisionTransformer, ResidualAttentionBlock):

    open_clip ViT                          CLIPVisionModel (model.vision_tower.*)
    conv1.weight                           embeddings.patch_embedding.weight
    class_embedding                        embeddings.class_embedding
    positional_embedding                   embeddings.position_embedding.weight
    ln_pre                                 pre_layrnorm
    resblocks.i.ln_1 / ln_2                encoder.layers.i.layer_norm1 / layer_norm2
    resblocks.i.attn.in_proj_{weight,bias} encoder.layers.i.self_attn.{q,k,v}_proj (split in 3)
    resblocks.i.attn.out_proj              encoder.layers.i.self_attn.out_proj
    resblocks.i.mlp.c_fc / c_proj          encoder.layers.i.mlp.fc1 / fc2
    ln_post                                post_layernorm (LLaVA's features never reach it)

    bundled LM                             LlamaForCausalLM (model.language_model.*, lm_head)
    tok_emb / head / norm                  embed_tokens / lm_head / norm
    blocks.i.attn_norm / mlp_norm          layers.i.input_layernorm / post_attention_layernorm
    blocks.i.attn.{q,k,v,o}                layers.i.self_attn.{q,k,v,o}_proj
    blocks.i.mlp.{gate,up,down}            layers.i.mlp.{gate,up,down}_proj

    mlp connector fc1 / fc2                model.multi_modal_projector.linear_1 / linear_2

The bundled LM is Llama's computation exactly: rotate-half rotary tables (the layout of Llama's
`rotate_half`, so no q/k row permutation is needed), RMSNorm in fp32, no biases, SwiGLU, and
grouped-query heads where query head h reads key/value head h // (n_heads / n_kv_heads) (our
`repeat_interleave` and Llama's `repeat_kv` agree). The tests compare logits to prove it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlmtool.errors import UsageError

INTERPOLATION = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3}  # PIL.Image.Resampling values
ACTIVATIONS = {"GELU": "gelu", "QuickGELU": "quick_gelu"}


@dataclass
class Source:
    """What the export reads: the checkpoint and its loaded open_clip tower."""

    ck: object  # vlm.checkpoint.Checkpoint
    clip: object  # clip.model.LoadedClip
    layer: int
    cls: bool


def refuse(why: str) -> UsageError:
    return UsageError(f"export-model: {why}")


def open_source(checkpoint: str | Path) -> Source:
    """Load the checkpoint and its tower, refusing (one line, before anything is written) what
    transformers' LLaVA cannot express."""
    from vlmtool.vlm.checkpoint import load_checkpoint
    from vlmtool.vlm.connectors import CONNECTORS, connector_class
    from vlmtool.vlm.infer import tower_field, load_tower

    ck = load_checkpoint(checkpoint, "cpu")
    cfg = ck.config
    why = connector_class(cfg.connector).llava
    if why:
        ok = ", ".join(name for name, c in CONNECTORS.items() if not c.llava)
        raise refuse(f"the {cfg.connector} connector ({why}) has no LLaVA equivalent; only {ok}-connector checkpoints export")
    tower = ck.tower or {}
    if not tower:
        raise refuse(f"checkpoint {checkpoint} records no vision tower (features.json's tower); nothing to export it with")
    anyres = (tower.get("views") or {}).get("anyres") or tower.get("anyres")
    if anyres:
        raise refuse(f"the checkpoint was trained on AnyRes features ({anyres}: tiles and row newlines); "
                     "LLaVA-1.5's single-view layout cannot express them")
    clip = load_tower(tower, "cpu")
    check_tower(clip.model.visual)
    if clip.preprocess.resize_mode not in ("shortest", "squash"):
        raise refuse(f"the tower's resize mode {clip.preprocess.resize_mode!r} (resize then pad) has no CLIPImageProcessor setting")
    if clip.preprocess.interpolation not in INTERPOLATION:
        raise refuse(f"the tower's interpolation {clip.preprocess.interpolation!r} has no CLIPImageProcessor setting")
    layer, cls = int(tower_field(tower, "layer", default=-2)), bool(tower_field(tower, "cls", default=False))
    if not -len(clip.model.visual.transformer.resblocks) <= layer < len(clip.model.visual.transformer.resblocks):
        raise refuse(f"feature layer {layer} is not a block of the tower")
    return Source(ck, clip, layer, cls)


def check_tower(visual) -> None:
    """Refuse an open_clip tower CLIPVisionModel cannot compute exactly."""
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
    from torch import nn

    if not isinstance(visual, VisionTransformer):
        raise refuse(f"the vision tower is a {type(visual).__name__} (a ResNet or timm tower); "
                     "transformers' LLaVA takes a CLIP ViT tower only")
    if isinstance(visual.ln_pre, nn.Identity):
        raise refuse("the ViT has no pre-norm (no_ln_pre); CLIPVisionModel always applies one")
    if getattr(visual, "class_embedding", None) is None or visual.conv1.bias is not None:
        raise refuse("the ViT has no class token or a patch-embedding bias; CLIPVisionModel has a class token and no bias")
    for b in visual.transformer.resblocks:
        act = type(b.mlp.gelu).__name__ if hasattr(b.mlp, "gelu") else None
        if type(b) is not ResidualAttentionBlock or not isinstance(b.attn, nn.MultiheadAttention):
            raise refuse(f"the ViT's blocks ({type(b).__name__}) are not plain CLIP blocks")
        if not isinstance(b.ls_1, nn.Identity) or not isinstance(b.ls_2, nn.Identity):
            raise refuse("the ViT uses layer scale, which CLIPVisionModel has no weights for")
        if act not in ACTIVATIONS or getattr(b.mlp.gelu, "approximate", "none") != "none":
            raise refuse(f"the ViT's MLP activation ({act}) is neither GELU nor QuickGELU")


# ------------------------------------------------------------------------------ configs


def vision_config(src: Source):
    from transformers import CLIPVisionConfig

    v = src.clip.model.visual
    b = v.transformer.resblocks[0]
    width = v.conv1.out_channels
    return CLIPVisionConfig(hidden_size=width, intermediate_size=b.mlp.c_fc.out_features,
                            num_hidden_layers=len(v.transformer.resblocks), num_attention_heads=b.attn.num_heads,
                            image_size=src.clip.preprocess.size, patch_size=v.conv1.kernel_size[0], num_channels=3,
                            hidden_act=ACTIVATIONS[type(b.mlp.gelu).__name__], layer_norm_eps=v.ln_pre.eps,
                            projection_dim=width)


def hf_feature_layer(layer: int) -> int:
    """open_clip's block index (forward_intermediates: the output of block `layer`) -> LLaVA's
    `vision_feature_layer` (an index into hidden_states, whose entry 0 is the embeddings): -k
    stays -k, a block i >= 0 is hidden_states[i + 1]."""
    return layer if layer < 0 else layer + 1


def text_config(src: Source, vocab_size: int):
    """The LM's transformers config: Llama's for the bundled LM, the hf LM's own otherwise."""
    from transformers import AutoConfig, LlamaConfig

    cfg, tok = src.ck.config, src.ck.tokenizer
    if cfg.is_hf:
        c = AutoConfig.from_pretrained(str(src.ck.path / "lm"))
        c.vocab_size = vocab_size
        return c
    return LlamaConfig(vocab_size=vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_hidden,
                       num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
                       head_dim=cfg.head_dim, max_position_embeddings=cfg.max_seq, rms_norm_eps=cfg.norm_eps,
                       rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta}, hidden_act="silu",
                       attention_bias=False, mlp_bias=False, tie_word_embeddings=cfg.tie_embeddings,
                       bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)


def llava_config(src: Source, vocab_size: int):
    from transformers import LlavaConfig

    vc = vision_config(src)
    grid = (vc.image_size // vc.patch_size) ** 2
    tc = text_config(src, vocab_size)
    return LlavaConfig(vision_config=vc, text_config=tc, image_token_index=src.ck.config.image_token_id,
                       image_seq_length=grid + int(src.cls), projector_hidden_act="gelu",
                       vision_feature_select_strategy="full" if src.cls else "default",
                       vision_feature_layer=hf_feature_layer(src.layer), multimodal_projector_bias=True,
                       tie_word_embeddings=bool(getattr(tc, "tie_word_embeddings", False)))


# ------------------------------------------------------------------------------ weights


def vision_weights(visual) -> dict:
    """open_clip ViT state -> CLIPVisionModel names (without the model's prefix)."""
    sd = {k: t.detach().float() for k, t in visual.state_dict().items()}
    out = {"embeddings.patch_embedding.weight": sd["conv1.weight"], "embeddings.class_embedding": sd["class_embedding"],
           "embeddings.position_embedding.weight": sd["positional_embedding"]}
    for a, b in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        out[f"{b}.weight"], out[f"{b}.bias"] = sd[f"{a}.weight"], sd[f"{a}.bias"]
    for i in range(len(visual.transformer.resblocks)):
        s, d = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for part in ("weight", "bias"):
            q, k, v = sd[s + f"attn.in_proj_{part}"].chunk(3, dim=0)  # nn.MultiheadAttention packs q, k, v in that order
            out.update({d + f"self_attn.q_proj.{part}": q, d + f"self_attn.k_proj.{part}": k, d + f"self_attn.v_proj.{part}": v})
            for a, b in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                out[d + f"{b}.{part}"] = sd[s + f"{a}.{part}"]
    return out


_BUNDLED = (("attn_norm", "input_layernorm"), ("mlp_norm", "post_attention_layernorm"), ("attn.q", "self_attn.q_proj"),
            ("attn.k", "self_attn.k_proj"), ("attn.v", "self_attn.v_proj"), ("attn.o", "self_attn.o_proj"),
            ("mlp.gate", "mlp.gate_proj"), ("mlp.up", "mlp.up_proj"), ("mlp.down", "mlp.down_proj"))


def lm_weights(src: Source) -> tuple[dict, object]:
    """(LM weights named as LLaVA's `model.language_model.*` and `lm_head.*`, with the prefix
    `language_model.` / `lm_head.`; the output head tensor)."""
    lm = src.ck.model.lm
    if src.ck.config.is_hf:
        prefix = lm.model.base_model_prefix + "."
        out = {}
        for k, t in lm.model.state_dict().items():
            if k.startswith(prefix):
                out["language_model." + k[len(prefix):]] = t.detach().float()
            elif k.startswith("lm_head."):
                out[k] = t.detach().float()
            else:
                raise refuse(f"the hf LM's weight {k} is neither in its base model nor its lm_head")
        return out, out.get("lm_head.weight")
    sd = {k: t.detach().float() for k, t in lm.state_dict().items()}
    out = {"language_model.embed_tokens.weight": sd["tok_emb.weight"], "language_model.norm.weight": sd["norm.weight"],
           "lm_head.weight": sd["head.weight"]}
    for i in range(src.ck.config.n_layers):
        for a, b in _BUNDLED:
            out[f"language_model.layers.{i}.{b}.weight"] = sd[f"blocks.{i}.{a}.weight"]
    return out, out["lm_head.weight"]


def resize_vocab(weights: dict, vocab: int) -> None:
    """Grow embed_tokens and lm_head to `vocab` rows (an hf LM's tokenizer gained `<image>` and
    `<image_newline>` past the model's vocabulary): new input rows are the mean embedding (the
    image rows are overwritten by the projector anyway), new output rows zero (and generation
    suppresses those tokens, as vlmtool's generate does)."""
    import torch

    for name in ("language_model.embed_tokens.weight", "lm_head.weight"):
        t = weights.get(name)
        if t is None or t.shape[0] >= vocab:
            continue
        fill = t.mean(0, keepdim=True) if "embed" in name else torch.zeros(1, t.shape[1])
        weights[name] = torch.cat([t, fill.expand(vocab - t.shape[0], -1)], 0)


def connector_weights(src: Source) -> dict:
    c = src.ck.model.connector
    return {f"multi_modal_projector.{b}.{p}": getattr(getattr(c, a), p).detach().float()
            for a, b in (("fc1", "linear_1"), ("fc2", "linear_2")) for p in ("weight", "bias")}
