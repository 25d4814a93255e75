"""`--decode device`: JPEGs decoded in batches on the model's device, then resized, cropped and
normalized there with torch ops, reproducing open_clip's eval transform
(open_clip/transform.py `image_transform(is_train=False)`: 'shortest' = Resize(size) then
CenterCrop(size); 'squash' = Resize((size, size)); 'longest' = ResizeKeepRatio(longest=1) then
CenterCropOrPad; bicubic (or bilinear) with antialias; then Normalize(mean, std)).

Loader workers only read bytes and parse headers (`encoded`): a baseline/progressive JPEG in RGB
or greyscale, without an EXIF rotation and ending in its EOI marker, travels as its bytes; any
other image (PNG, CMYK, rotated, a truncated JPEG) takes the CPU path in the worker, per sample,
and arrives as pixels. The main process then calls `model_input`: one batched
`torchvision.io.decode_jpeg(list, device=...)`, a per-image resize and crop on the device, and
the normalization of the whole batch. A JPEG the device decoder refuses is decoded again with
PIL in the main process (`decode_image`): it is used when PIL reads it, and otherwise becomes a
reject with the reason the CPU path would have given. The same code runs on the CPU, which is
how CI tests it (tests/test_device_decode.py).

Resizing runs in two rounded passes as PIL's does (`resize_crop`): on the shapes world every
pixel is within one 8-bit level (0.0039) of open_clip's PIL transform (docs/benchmarks.md).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from vlmtool.core.samples import SampleError

DECODES = ("cpu", "device")
EOI = b"\xff\xd9"  # JPEG end-of-image marker: a file without it at the end was cut short
ROTATED = (2, 3, 4, 5, 6, 7, 8)  # EXIF orientations other than 1: the CPU path turns these upright


@dataclass(frozen=True)
class Encoded:
    """A JPEG's bytes (uint8 tensor [N]) and its size from the header; decoded on the device."""

    data: object
    width: int
    height: int

    def pin_memory(self) -> Encoded:
        return Encoded(self.data.pin_memory(), self.width, self.height)


@dataclass(frozen=True)
class Decoded:
    """A fully decoded image, uint8 [3, H, W] (decoded by PIL), to resize on the device."""

    data: object


def device_decodable(header, data: bytes) -> bool:
    """Whether the device decoder gives the same pixels as the CPU path for this image: a JPEG in
    RGB or greyscale (L), not rotated by EXIF, ending in EOI (truncated files go to PIL, which
    rejects them)."""
    if header is None or getattr(header, "format", None) != "JPEG" or header.mode not in ("RGB", "L"):
        return False
    if not data.rstrip(b"\0\r\n ").endswith(EOI):
        return False
    try:
        return header.getexif().get(0x0112, 1) not in ROTATED
    except Exception:  # noqa: BLE001 - an unreadable EXIF block: let PIL's path decide
        return False


def encoded(header, data: bytes) -> Encoded | None:
    """The worker's side: the bytes to decode on the device, or None for the CPU path."""
    import torch

    if not device_decodable(header, data):
        return None
    w, h = header.size
    return Encoded(torch.frombuffer(bytearray(data), dtype=torch.uint8), w, h)


def resized_size(w: int, h: int, size: int, resize_mode: str) -> tuple[int, int]:
    """(height, width) after open_clip's eval resize, before the crop: torchvision Resize(int)
    (short side to `size`, long side int(size * long / short)), Resize((size, size)), or timm's
    ResizeKeepRatio(longest=1) (round(side / max ratio))."""
    if resize_mode == "squash":
        return size, size
    if resize_mode == "longest":
        ratio = max(h / size, w / size)
        return round(h / ratio), round(w / ratio)
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if w <= h else (new_short, new_long)


def resize_crop(img, size: int, resize_mode: str = "shortest", interpolation: str = "bicubic"):
    """uint8 [3, H, W] on any device -> float32 [3, S, S] in 0..255, whole levels: open_clip's
    eval resize and centre crop (or pad, black) in torch ops.

    PIL resizes in two passes, across then down, each rounded to uint8 (half up) with the
    bicubic overshoot clipped; so does this, in float64: within one level of PIL everywhere
    (float32 leaves a few pixels two levels off, measured on the shapes world)."""
    import torch
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    _, h, w = img.shape
    nh, nw = resized_size(w, h, size, resize_mode)
    mode = InterpolationMode.BILINEAR if interpolation == "bilinear" else InterpolationMode.BICUBIC
    x = img.to(torch.float64)
    if nw != w:  # across: [3, h, nw]
        x = torch.floor(F.resize(x, [h, nw], interpolation=mode, antialias=True).clamp_(0, 255) + 0.5)
    if nh != h:  # down: [3, nh, nw]
        x = torch.floor(F.resize(x, [nh, nw], interpolation=mode, antialias=True).clamp_(0, 255) + 0.5)
    if (nh, nw) != (size, size):
        x = F.center_crop(x, [size, size])  # pads with zeros (black) where smaller, as CenterCropOrPad
    return x.float().contiguous()


def _decode_all(items: list, device) -> tuple[dict, dict]:
    """Decode the batch's JPEGs, all at once, then one by one where the batch call fails.
    -> ({index: uint8 [3, H, W] on device}, {index: SampleError} for the unreadable ones)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    idx = [i for i, it in enumerate(items) if isinstance(it, Encoded)]
    if not idx:
        return {}, {}
    datas = [items[i].data for i in idx]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 points to TorchCodec; decode_jpeg still works
        try:
            return dict(zip(idx, decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))), {}
        except (RuntimeError, ValueError):
            pass
        return _one_by_one(idx, datas, device)


def _one_by_one(idx: list, datas: list, device) -> tuple[dict, dict]:
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    out, bad = {}, {}
    for i, d in zip(idx, datas):
        try:
            out[i] = decode_jpeg(d, mode=ImageReadMode.RGB, device=device)
        except (RuntimeError, ValueError):
            try:  # the CPU decoder: the pixels when PIL reads it, else the reason it gives
                import numpy as np

                from vlmtool.core.samples import decode_image

                im = decode_image(bytes(d.cpu().numpy()))
                out[i] = torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).to(device)
            except SampleError as e:
                bad[i] = e
    return out, bad


def model_input(items: list, pp, device, mean_std_cache: dict = {}):  # noqa: B006 - a per-process cache
    """A batch of worker payloads -> (normalized float [B', 3, S, S] on device, {index:
    SampleError} of the samples left out, B' = B minus those). An item is an `Encoded` JPEG, a
    `Decoded` image,
    uint8 [S, S, 3] pixels (the fast CPU path) or float [3, S, S] already normalized (the exact
    CPU path, encode's transform)."""
    import torch

    decoded, bad = _decode_all(items, device)
    key = (str(device), tuple(pp.mean), tuple(pp.std))
    if key not in mean_std_cache:
        mean_std_cache[key] = (torch.tensor(pp.mean, device=device).view(3, 1, 1) * 255,
                               torch.tensor(pp.std, device=device).view(3, 1, 1) * 255)
    mean, std = mean_std_cache[key]
    out = []
    for i, it in enumerate(items):
        if i in bad:
            continue
        if i in decoded or isinstance(it, Decoded):
            img = decoded[i] if i in decoded else it.data.to(device, non_blocking=True)
            x = (resize_crop(img, pp.size, pp.resize_mode, pp.interpolation) - mean) / std
        else:
            x = torch.as_tensor(it).to(device, non_blocking=True)
            x = (x.permute(2, 0, 1).float() - mean) / std if x.dtype == torch.uint8 else x.float()
        out.append(x)  # [3, S, S]
    px = torch.stack(out) if out else torch.zeros(0, 3, pp.size, pp.size, device=device)
    return px, bad


def drop_rejected(batch, bad: dict, data):
    """The Batch without the samples of `bad` ({index: SampleError}): they move to its rejects,
    in their tar places; `data` is the job's collated data for the samples that remain."""
    from dataclasses import replace

    from vlmtool.core.records import Reject

    if not bad:
        return replace(batch, data=data)
    keys, rejects, order = [], list(batch.rejects), []
    for kind, i in batch.order:
        if kind == "reject":
            order.append(("reject", i))
        elif i in bad:
            order.append(("reject", len(rejects)))
            rejects.append(Reject(batch.shard.name, batch.keys[i], bad[i].reason, bad[i].detail))
        else:
            order.append(("ok", len(keys)))
            keys.append(batch.keys[i])
    return replace(batch, keys=tuple(keys), data=data if keys else None, rejects=tuple(rejects), order=tuple(order))


def check_decode(decode: str) -> None:
    from vlmtool.errors import UsageError

    if decode not in DECODES:
        raise UsageError(f"--decode {decode}: use cpu or device")


__all__ = ["Encoded", "Decoded", "encoded", "model_input", "resize_crop", "resized_size", "drop_rejected", "check_decode"]
