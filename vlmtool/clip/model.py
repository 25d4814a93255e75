"""CLIP loading shared by filter, encode and clip-train: any open_clip architecture with a
pretrained tag, a checkpoint file, or a model folder written by clip-train.

Architectures are data (open_clip's JSON configs); the package adds its own configs (the tiny
CLIP the tests and the demo train) to open_clip's registry, so `tiny-clip` is just another name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from vlmtool.errors import UsageError

CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False


def register_configs() -> None:
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


@dataclass
class Preprocess:
    """What the image side needs, as plain data (picklable into loader workers)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    def to_json(self) -> dict:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std), "interpolation": self.interpolation,
                "resize_mode": self.resize_mode}


@dataclass
class LoadedClip:
    model: object  # open_clip CLIP, eval mode, on its device
    tokenizer: object
    preprocess: Preprocess
    transform: object  # open_clip's own eval transform (the exact path)
    arch: str
    pretrained: str | None
    context_length: int
    meta: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {"model": self.arch, "pretrained": self.pretrained, "preprocess": self.preprocess.to_json()}


def is_model_dir(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / "open_clip_config.json").exists()


def _missing_weights(arch: str, pretrained: str, err: Exception) -> UsageError:
    return UsageError(
        f"weights for {arch} with pretrained={pretrained!r} could not be loaded ({type(err).__name__}: {err}). "
        "Without network access open_clip cannot fetch a pretrained tag: put the checkpoint in open_clip's cache "
        "(HF_HUB_CACHE), pass a local file with --pretrained /path/to/open_clip_model.safetensors, "
        "or train one here with `vlmtool clip-train` and pass its folder."
    )


def load_clip(arch: str | None = None, pretrained: str | None = None, device=None, precision: str = "fp32") -> LoadedClip:
    """Build an open_clip model.

    - `pretrained` a clip-train folder (or any folder with open_clip_config.json): that model;
      `arch` may be left out.
    - `pretrained` a file: the architecture `arch` with that checkpoint.
    - `pretrained` a tag (e.g. `openai`, `laion2b_s34b_b79k`): open_clip's own download.
    - `pretrained` None: random weights (tests, benchmarks of speed).
    """
    import open_clip
    import torch

    register_configs()
    device = device or torch.device("cpu")
    meta: dict = {}
    if pretrained and is_model_dir(pretrained):
        name = f"local-dir:{Path(pretrained).resolve()}"
        try:
            model, _, transform = open_clip.create_model_and_transforms(name, device=device, precision=precision)
        except Exception as e:
            raise UsageError(f"cannot load the model folder {pretrained}: {type(e).__name__}: {e}") from None
        tokenizer = open_clip.get_tokenizer(name)
        import orjson

        cfg_path = Path(pretrained) / "config.json"
        meta = orjson.loads(cfg_path.read_bytes()) if cfg_path.exists() else {}
        arch = meta.get("arch") or arch or "local"
    else:
        if not arch:
            raise UsageError("--model ARCH is needed unless --pretrained names a clip-train folder")
        if arch not in open_clip.list_models():
            raise UsageError(f"unknown open_clip architecture {arch!r} (see open_clip.list_models(); the tiny test model is 'tiny-clip')")
        if pretrained and not os.path.exists(pretrained) and ("/" in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors", ".pth"))):
            raise UsageError(f"--pretrained {pretrained}: no such file or folder")
        if pretrained and not os.path.exists(pretrained):
            tags = open_clip.list_pretrained_tags_by_model(arch)
            if pretrained not in tags:
                raise UsageError(f"{arch} has no pretrained tag {pretrained!r}; its tags: {', '.join(tags) or 'none'}")
        try:
            model, _, transform = open_clip.create_model_and_transforms(arch, pretrained=pretrained or None, device=device,
                                                                       precision=precision)
        except (RuntimeError, OSError, ValueError) as e:
            if pretrained:
                raise _missing_weights(arch, pretrained, e) from None
            raise
        tokenizer = open_clip.get_tokenizer(arch)
    model.eval()
    pre_cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = pre_cfg.get("size", model.visual.image_size)
    size = size[0] if isinstance(size, (tuple, list)) else size
    pp = Preprocess(int(size), tuple(pre_cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)), tuple(pre_cfg.get("std", open_clip.OPENAI_DATASET_STD)),
                    pre_cfg.get("interpolation", "bicubic"), pre_cfg.get("resize_mode", "shortest"))
    ctx = getattr(tokenizer, "context_length", None) or model.context_length
    return LoadedClip(model, tokenizer, pp, transform, arch, pretrained, int(ctx), meta)
