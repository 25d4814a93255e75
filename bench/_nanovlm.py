"""nanoVLM's model (huggingface/nanoVLM, models/vision_language_model.py and
models/language_model.py) at vlmtool's dimensions, for the side-by-side in bench/train.py.

Nothing of nanoVLM is kept here: `load(path)` imports its classes from a checkout the user gives
(`--nanovlm PATH`, e.g. `git clone https://github.com/huggingface/nanoVLM`). Its ViT is replaced
by the identity (the features are precomputed, as vlmtool trains on them), its projector takes
the feature width (pixel shuffle factor 1), and its tokenizer (a hub download) by the image
token id of ours; the forward, loss and LM are nanoVLM's own code.
"""

from __future__ import annotations

import sys
import types


def load(path: str):
    """The nanoVLM modules (models.vision_language_model, .language_model, .modality_projector,
    .config) from a checkout. Its data package (tokenizer and image processors: transformers,
    torchvision, einops) is not needed for the model's forward and is stubbed."""
    sys.path.insert(0, path)
    if "data.processors" not in sys.modules:
        data, proc = types.ModuleType("data"), types.ModuleType("data.processors")
        data.__path__ = []
        proc.get_tokenizer = None
        sys.modules.update({"data": data, "data.processors": proc})
    import models.config as config
    import models.language_model as language_model
    import models.modality_projector as modality_projector
    import models.vision_language_model as vlm

    return types.SimpleNamespace(config=config, lm=language_model, mp=modality_projector, vlm=vlm)


def build(nano, cfg, n_visual: int):
    """nanoVLM's VisionLanguageModel with vlmtool's LM dimensions (`cfg`, a VLMConfig) and a
    projector from the feature width, built without its hub downloads."""
    import torch

    c = nano.config.VLMConfig(
        vit_hidden_dim=cfg.d_vision, mp_pixel_shuffle_factor=1, mp_image_token_length=n_visual,
        lm_hidden_dim=cfg.d_model, lm_inter_dim=cfg.ffn_hidden, lm_rms_eps=cfg.norm_eps, lm_re_base=cfg.rope_theta,
        lm_max_position_embeddings=cfg.max_seq, lm_base_vocab_size=cfg.vocab_size, extra_token_amount=0,
        lm_vocab_size=cfg.vocab_size, lm_n_heads=cfg.n_heads, lm_n_kv_heads=cfg.n_kv_heads, lm_n_blocks=cfg.n_layers,
        lm_dropout=0.0, lm_max_length=cfg.max_seq, lm_use_tokens=False, lm_tie_weights=cfg.tie_embeddings)
    m = nano.vlm.VisionLanguageModel.__new__(nano.vlm.VisionLanguageModel)
    torch.nn.Module.__init__(m)
    m.cfg, m.load_backbone = c, False
    m.vision_encoder = torch.nn.Identity()  # the features are the ViT's output
    m.decoder = nano.lm.LanguageModel(c)
    m.MP = nano.mp.ModalityProjector(c)
    m.tokenizer = types.SimpleNamespace(image_token_id=cfg.image_token_id)
    return m


def inputs(batch: dict, n_visual: int) -> dict:
    """vlmtool's collated batch -> nanoVLM's forward arguments: the same ids and shifted targets
    (nanoVLM shifts in its collator too), the image rows' features [N_img, n_visual, D] as its
    `images`. No attention_mask: rows are right padded, so causal attention alone is exact for
    the real tokens (and nanoVLM's SDPA call refuses a mask with is_causal on this torch).
    Packed rows get no block-diagonal mask: nanoVLM packs without one."""
    vis, mask = batch.get("visual"), batch.get("visual_mask")
    images = [vis[mask].reshape(-1, n_visual, vis.shape[-1])] if vis is not None and bool(mask.any()) else []
    return {"input_ids": batch["input_ids"], "images": images, "attention_mask": None, "targets": batch["targets"]}
