"""Image-caption preparation for CLIP, run in loader workers.

fast (default): JPEG draft decoding at the smallest DCT scale that still covers the target,
then one resize of the centre crop straight to the model's size, kept as uint8; normalizing
happens on the device, batched. exact: open_clip's own eval transform (torchvision Resize,
CenterCrop, ToTensor, Normalize) on the fully decoded image. bench/filter.py measures the speed
of both and the score deviation between them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vlmtool.clip.model import Preprocess
from vlmtool.core.samples import Sample, SampleError

INTERP = {"bicubic": 3, "bilinear": 2, "nearest": 0, "lanczos": 1}  # PIL.Image.Resampling values


@dataclass
class PreFilter:
    """Cheap checks before the model; a failing sample is rejected as filter:<check>."""

    min_side: int = 0
    max_aspect: float = 0.0  # 0: off
    min_words: int = 0
    min_chars: int = 0

    def check(self, s: Sample) -> None:
        if self.min_side and min(s.width, s.height) < self.min_side:
            raise SampleError("filter:min_side", f"{s.width}x{s.height} < {self.min_side}")
        if self.max_aspect and max(s.width, s.height) / max(1, min(s.width, s.height)) > self.max_aspect:
            raise SampleError("filter:aspect", f"{s.width}x{s.height} > {self.max_aspect}:1")
        cap = s.caption or ""
        if self.min_words and len(cap.split()) < self.min_words:
            raise SampleError("filter:caption_words", f"{len(cap.split())} words")
        if self.min_chars and len(cap) < self.min_chars:
            raise SampleError("filter:caption_chars", f"{len(cap)} chars")


DRAFT_MARGIN = 4  # decode at a DCT scale that still leaves 4x the pixels the final resize needs (bench/filter.py: score deviation)
REDUCING_GAP = 3.0  # PIL: box-reduce by an integer factor first while 3x the output size remains


def crop_box(w: int, h: int, size: int) -> tuple[float, float, float, float]:
    """The source box that torchvision's Resize(size) then CenterCrop(size) keep, in the source
    image's coordinates (the same integer rounding as torchvision's resize and crop)."""
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    sx, sy = w / new_w, h / new_h
    return (left * sx, top * sy, (left + size) * sx, (top + size) * sy)


def fast_pixels(s: Sample, pp: Preprocess):
    """uint8 [S, S, 3]: torchvision's shortest-side resize and centre crop as one PIL resize of
    the crop box, from a JPEG decoded at a reduced DCT scale where the image is large enough."""
    import numpy as np
    from PIL import Image

    S = pp.size
    w, h = s.width, s.height
    scale = S / min(w, h)
    draft = (max(1, math.ceil(w * scale * DRAFT_MARGIN)), max(1, math.ceil(h * scale * DRAFT_MARGIN)))
    im = s.load_image(draft=draft)  # JPEG: decodes at 1/2, 1/4 or 1/8 scale when that still covers `draft`
    w2, h2 = im.size
    x0, y0, x1, y1 = crop_box(w, h, S)
    fx, fy = w2 / w, h2 / h
    im = im.resize((S, S), Image.Resampling(INTERP.get(pp.interpolation, 3)), box=(x0 * fx, y0 * fy, x1 * fx, y1 * fy),
                   reducing_gap=REDUCING_GAP)
    return np.array(im, dtype=np.uint8)  # a writable copy: torch warns on read-only arrays


class ClipPrep:
    """Preparer for the batch core: (pixels, tokens) per sample; collate stacks them. With
    decode="device" a JPEG travels as its bytes (core/device_decode.py) and the other images
    take the `mode` path; collate then keeps a list."""

    def __init__(self, pp: Preprocess, tokenizer, mode: str = "fast", transform=None, prefilter: PreFilter | None = None,
                 decode: str = "cpu"):
        if mode not in ("fast", "exact"):
            raise ValueError(mode)
        self.pp, self.tokenizer, self.mode, self.transform = pp, tokenizer, mode, transform
        self.prefilter = prefilter or PreFilter()
        self.decode = decode

    def prepare(self, s: Sample):
        self.prefilter.check(s)
        if self.decode == "device":
            from vlmtool.core.device_decode import encoded

            enc = encoded(s.header, s.image_bytes or b"")
            if enc is not None:
                return enc, s.caption
        if self.mode == "fast":
            px = fast_pixels(s, self.pp)
        else:
            px = self.transform(s.load_image()).numpy()  # float32 [3, S, S], normalized
        return px, s.caption

    def collate(self, payloads: list):
        import numpy as np
        import torch

        tokens = self.tokenizer([p[1] for p in payloads])
        if self.decode == "device":  # Encoded JPEGs and CPU-path pixels, in order
            return [p[0] if not isinstance(p[0], np.ndarray) else torch.from_numpy(p[0]) for p in payloads], tokens
        px = torch.from_numpy(np.stack([p[0] for p in payloads]))
        return px, tokens


def to_model_input(px, pp: Preprocess, device, mean_std_cache: dict = {}):  # noqa: B006 - a per-process cache
    """uint8 [B, S, S, 3] -> normalized float [B, 3, S, S] on device; float input passes through."""
    import torch

    x = px.to(device, non_blocking=True)
    if x.dtype != torch.uint8:
        return x.float()
    key = (str(device), pp.mean, pp.std)
    if key not in mean_std_cache:
        mean_std_cache[key] = (torch.tensor(pp.mean, device=device).view(1, 3, 1, 1) * 255,
                               torch.tensor(pp.std, device=device).view(1, 3, 1, 1) * 255)
    mean, std = mean_std_cache[key]
    return (x.permute(0, 3, 1, 2).float() - mean) / std
