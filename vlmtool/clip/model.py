"""CLIP loading shared by filter, encode and clip-train: any open_clip architecture with a
pretrained tag, a checkpoint file, or a model folder written by clip-train.

Architectures are data (open_clip's JSON configs); the package adds its own configs (the tiny
CLIP the tests and the demo train) to open_clip's registry, so `tiny-clip` is just another name.
"""

from __future__ import annotations

import os
import warnings
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
    - `pretrained` a tag (e.g. `openai`, `laion2b_s34b_b79k`): open_clip's own download (from
      its cache when offline; a tag that is neither cached nor reachable fails at once).
    - `pretrained` "random": random weights, asked for explicitly (training from scratch, speed
      tests). No weights at all (None) is an error: scores of random weights mean nothing.
    """
    import open_clip
    import torch

    register_configs()
    device = device or torch.device("cpu")
    meta: dict = {}
    if not pretrained:
        raise UsageError("no weights given: pass --pretrained (a clip-train folder, a checkpoint file or a pretrained tag; "
                         "'random' for random weights)")
    if pretrained == "random":
        pretrained = None
    if pretrained and is_model_dir(pretrained):
        model, transform, tokenizer, arch, meta = _from_folder(pretrained, arch, device, precision)
    else:
        model, transform, tokenizer = _from_arch(arch, pretrained, device, precision)
    model.eval()
    pre_cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = pre_cfg.get("size", model.visual.image_size)
    size = size[0] if isinstance(size, (tuple, list)) else size
    pp = Preprocess(int(size), tuple(pre_cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)), tuple(pre_cfg.get("std", open_clip.OPENAI_DATASET_STD)),
                    pre_cfg.get("interpolation", "bicubic"), pre_cfg.get("resize_mode", "shortest"))
    return LoadedClip(model, tokenizer, pp, transform, arch, pretrained, meta)


def _from_folder(pretrained: str, arch: str | None, device, precision: str):
    """A clip-train folder (open_clip's local-dir layout): (model, transform, tokenizer, arch, meta)."""
    import open_clip
    import orjson

    name = f"local-dir:{Path(pretrained).resolve()}"
    try:
        model, _, transform = open_clip.create_model_and_transforms(name, device=device, precision=precision)
    except Exception as e:
        raise UsageError(f"cannot load the model folder {pretrained}: {type(e).__name__}: {e}") from None
    tokenizer = open_clip.get_tokenizer(name)
    cfg_path = Path(pretrained) / "config.json"
    meta = orjson.loads(cfg_path.read_bytes()) if cfg_path.exists() else {}
    if arch and meta.get("arch") and arch != meta["arch"]:
        raise UsageError(f"--model {arch} does not match the model folder {pretrained}, which holds a {meta['arch']}: "
                         "leave out --model")
    return model, transform, tokenizer, meta.get("arch") or arch or "local", meta


def _from_arch(arch: str | None, pretrained: str | None, device, precision: str):
    """An open_clip architecture with a checkpoint file, a pretrained tag or random weights (None):
    (model, transform, tokenizer)."""
    import open_clip

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
        _check_reachable(arch, pretrained)
    try:
        with _quiet_open_clip(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's unpickler warns about the very files it then refuses
            model, _, transform = open_clip.create_model_and_transforms(arch, pretrained=pretrained or None, device=device,
                                                                       precision=precision)
    except Exception as e:
        if pretrained and os.path.isfile(pretrained):
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise UsageError(f"--pretrained {pretrained} is not a usable {arch} checkpoint ({type(e).__name__}: {first[:200]})") from None
        if pretrained:
            raise _missing_weights(arch, pretrained, e) from None
        raise
    return model, transform, open_clip.get_tokenizer(arch)


def _check_reachable(arch: str, tag: str) -> None:
    """A pretrained tag must be in the local cache or its hub reachable: checked once, so an
    offline run fails in a second instead of retrying for a minute."""
    import socket

    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
    hub = (cfg.get("hf_hub") or "").rstrip("/")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id = "/".join(hub.split("/")[:2])
        for fn in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(repo_id, fn), str):
                return
        host = "huggingface.co"
    else:
        from urllib.parse import urlparse

        host = urlparse(cfg.get("url") or "").hostname
        if not host:
            return
    import os

    err: Exception = OSError("HF_HUB_OFFLINE is set")
    if not os.environ.get("HF_HUB_OFFLINE"):
        try:
            socket.create_connection((host, 443), timeout=3).close()
            return
        except OSError as e:
            err = e
    raise _missing_weights(arch, tag, err)


class _quiet_open_clip:
    """open_clip logs a root-logger warning when a model gets random weights on purpose."""

    def __enter__(self):
        import logging

        self._level = logging.root.level
        logging.root.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        import logging

        logging.root.setLevel(self._level)


def grid_tokens(visual, pixels, layer: int, cls: bool = False, pooled: bool = False):
    """Block `layer`'s token grid of a batch, for any open_clip tower: a ViT's patch tokens (its
    class token first with `cls`) or a ResNet stage's feature map (open_clip's ModifiedResNet:
    stem, layer1..layer4; -2 is layer3), both row-major. -> (rows [N, L, D], pooled [N, E] or None,
    the tower's own image embedding from the same forward when `pooled`)."""
    import torch

    out = visual.forward_intermediates(pixels, indices=[layer], stop_early=not pooled, intermediates_only=not pooled,
                                       output_fmt="NCHW", output_extra_tokens=cls)
    rows = out["image_intermediates"][0].flatten(2).transpose(1, 2)  # [N, D, H, W] -> [N, H*W, D]
    if cls:
        prefix = out.get("image_intermediates_prefix")
        if not prefix:
            raise UsageError(f"--cls: this tower ({type(visual).__name__}) has no class token")
        rows = torch.cat([prefix[0], rows], dim=1)
    return rows, (out["image_features"] if pooled else None)


def token_grid(loaded: LoadedClip, layer: int, cls: bool = False) -> tuple[int, int]:
    """(stride, width) of block `layer`'s token grid: pixels a token covers across (a ViT's patch
    size; a ResNet stage's downsampling) and its channels, read off one blank image's forward (so
    a bad --layer, or --cls on a tower without a class token, is refused before any work)."""
    import math

    import torch

    visual = loaded.model.visual
    size = loaded.preprocess.size
    try:
        with torch.inference_mode():
            rows, _ = grid_tokens(visual, torch.zeros(1, 3, size, size, device=next(visual.parameters()).device), layer, cls)
    except (IndexError, AssertionError, ValueError) as e:
        raise UsageError(f"--layer {layer}: not a block of this tower ({type(e).__name__}: {e})") from None
    side = math.isqrt(rows.shape[1] - int(cls))
    if side < 1 or size % side:
        raise UsageError(f"the tower's grid at --layer {layer} ({side} across) does not divide its image size {size}")
    return size // side, int(rows.shape[-1])
