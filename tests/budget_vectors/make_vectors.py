"""Make tests/budget_vectors/vectors.json from the reference implementations.

Run with transformers installed (not a vlmtool dependency; no weights or hub access needed):

    python -m venv /tmp/tf && /tmp/tf/bin/pip install transformers pillow numpy torch torchvision
    /tmp/tf/bin/python tests/budget_vectors/make_vectors.py

For the families transformers implements, the counts come from running its image processors,
constructed with the published checkpoints' arguments: the PIL image processors' own
preprocess on real arrays (tiles, crops, grids), and the processors' token-count methods
(`_get_number_of_features`, `get_number_of_image_patches`, `get_num_of_video_patches`, the
helpers vLLM uses) called on those image processors. The hosted APIs' vectors are the worked
examples of their documentation.

MiniCPM-V 4.x's processor is not in transformers: it ships as remote code in the model repositories.
Its vectors come from that code, imported from a local snapshot (`huggingface-cli download
openbmb/MiniCPM-V-4_5 --include "*.py" "*.json"`; no weights needed), when one is named:

    MINICPMV_REMOTE_CODE=/path/to/snapshot /tmp/tf/bin/python tests/budget_vectors/make_vectors.py --minicpmv

(`--minicpmv` remakes only those; a full or `--frontier` run includes them when the variable is set
and keeps the stored ones otherwise.)
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import os
import random
import re
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import transformers
from transformers.image_utils import SizeDict
from transformers.models.cohere2_vision.image_processing_cohere2_vision import (
    Cohere2VisionImageProcessor,
)
from transformers.models.deepseek_vl.processing_deepseek_vl import (
    DeepseekVLProcessor,
)
from transformers.models.gemma3.image_processing_pil_gemma3 import (
    Gemma3ImageProcessorPil,
)
from transformers.models.gemma3n.processing_gemma3n import Gemma3nProcessor
from transformers.models.glm4v.image_processing_pil_glm4v import (
    Glm4vImageProcessorPil,
)
from transformers.models.glm4v.video_processing_glm4v import Glm4vVideoProcessor
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
    GotOcr2ImageProcessorPil,
)
from transformers.models.idefics2.image_processing_pil_idefics2 import (
    Idefics2ImageProcessorPil,
)
from transformers.models.idefics2.processing_idefics2 import Idefics2Processor
from transformers.models.idefics3.image_processing_pil_idefics3 import (
    Idefics3ImageProcessorPil,
)
from transformers.models.janus.processing_janus import JanusProcessor
from transformers.models.llama4 import image_processing_llama4 as llama4
from transformers.models.llama4.processing_llama4 import Llama4Processor
from transformers.models.llava_next.image_processing_pil_llava_next import (
    LlavaNextImageProcessorPil,
)
from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
)
from transformers.models.llava_onevision.processing_llava_onevision import (
    LlavaOnevisionProcessor,
)
from transformers.models.molmo2.image_processing_molmo2 import Molmo2ImageProcessor
from transformers.models.ovis2 import image_processing_pil_ovis2 as ovis2
from transformers.models.ovis2.processing_ovis2 import Ovis2Processor
from transformers.models.phi4_multimodal import (
    image_processing_phi4_multimodal as phi4,
)
from transformers.models.phi4_multimodal.feature_extraction_phi4_multimodal import (
    Phi4MultimodalFeatureExtractor,
)
from transformers.models.pixtral.image_processing_pil_pixtral import (
    PixtralImageProcessorPil,
    get_resize_output_image_size,
)
from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import (
    Qwen2_5OmniProcessor,
    _get_feat_extract_output_lengths,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
    Qwen2VLImageProcessorPil,
)
from transformers.models.qwen2_vl.video_processing_qwen2_vl import (
    Qwen2VLVideoProcessor,
)
from transformers.models.qwen3_vl.video_processing_qwen3_vl import (
    Qwen3VLVideoProcessor,
)
from transformers.models.smolvlm.image_processing_pil_smolvlm import (
    SmolVLMImageProcessorPil,
)
from transformers.models.whisper.feature_extraction_whisper import (
    WhisperFeatureExtractor,
)

OUT = Path(__file__).with_name("vectors.json")

SIZES = [(1, 1), (1, 2), (2, 1), (13, 13), (14, 14), (27, 27), (28, 28), (29, 57), (100, 100), (224, 224), (336, 336),
         (337, 336), (336, 337), (384, 384), (448, 448), (640, 480), (480, 640), (800, 600), (1024, 1024), (1280, 720),
         (1920, 1080), (1080, 1920), (2048, 4096), (4000, 3000), (10000, 10000), (10000, 50), (50, 10000), (200, 1),
         (1, 200), (201, 1), (10000, 1), (1, 10000), (3, 10000), (10000, 57), (9999, 9998), (1456, 1456), (1457, 729),
         (364, 728), (729, 1456)]
rng = random.Random(0)
SIZES += [(rng.randint(1, 4000), rng.randint(1, 4000)) for _ in range(40)]
SIZES += [(rng.randint(100, 800), rng.randint(100, 800)) for _ in range(20)]
# Issue 25's sets: random sizes of 1 to 8000 px and extreme aspect ratios (mistral3, MiniCPM-V 4.6).
SIZES25 = SIZES + [(rng.randint(1, 8000), rng.randint(1, 8000)) for _ in range(80)]
SIZES25 += [(8000, 1), (1, 8000), (8000, 2), (2, 8000), (8000, 5), (5, 8000), (7999, 6), (6, 7999), (1540, 1), (1, 1540), (3080, 1),
            (3081, 2), (8000, 27), (27, 8000), (8000, 28), (8000, 29), (4000, 11), (8000, 8000), (7777, 13), (13, 7777), (2, 2), (3, 3), (27, 1),
            (28, 1), (29, 1), (1, 29), (55, 1), (57, 2)]
SIZES25 += [(rng.randint(1, 8000), rng.randint(1, 40)) for _ in range(15)] + [(rng.randint(1, 40), rng.randint(1, 8000)) for _ in range(15)]
# Real preprocessing runs on arrays of these (w*h bounded so generation stays quick).
REAL = [s for s in SIZES if s[0] * s[1] <= 4_500_000] + [(10000, 10000)]
REAL += [s for s in SIZES25 if s[0] * s[1] <= 4_500_000 and s not in REAL]


def arr(w, h):
    return np.zeros((h, w, 3), dtype=np.uint8)


def safe(fn, *args):
    try:
        return fn(*args)
    except (ValueError, ZeroDivisionError) as e:  # the reference refuses the size
        return {"error": f"{type(e).__name__}: {e}"}


def llava_next_like(proc_cls, image_processor, num_image_tokens=None, patch_size=14, vision_aspect_ratio=None, extra=1, strategy="default"):
    ns = SimpleNamespace(image_processor=image_processor, patch_size=patch_size, num_additional_image_tokens=extra,
                         num_image_tokens=num_image_tokens, vision_aspect_ratio=vision_aspect_ratio)
    ns._get_unpadded_features = functools.partial(proc_cls._get_unpadded_features, ns)

    def count(w, h, tile):
        n = proc_cls._get_number_of_features(ns, h, w, tile, tile)
        return n - 1 if strategy == "default" else n

    return count


def images(ip, w, h, **kw):
    """Run an image processor's own preprocess on a w x h array (sizes of REAL only)."""
    return ip(arr(w, h), return_tensors="np", input_data_format="channels_last", **kw)


def count_rows(sizes, count, real=None):
    """[{size, tokens | error}] from count(w, h); with real(w, h) -> dict, that too for REAL sizes."""
    rows = []
    for w, h in sizes:
        n = safe(count, w, h)
        row = {"size": [w, h], "tokens": int(n)} if not isinstance(n, dict) else {"size": [w, h], **n}
        if real is not None and "tokens" in row and (w, h) in REAL and w * h <= 4_500_000:
            got = safe(real, w, h)
            row = {"size": [w, h], **got} if "error" in got else {**row, **got}  # the processor itself refuses it
        rows.append(row)
    return rows


def _qwen3_glm(vectors: dict) -> None:
    # Qwen3-VL (Qwen/Qwen3-VL-* preprocessor_config.json: patch 16, 65536..16777216 pixels).
    ip = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2, size={"shortest_edge": 65536, "longest_edge": 16777216})
    vectors["qwen3-vl"] = count_rows(SIZES, lambda w, h: ip.get_number_of_image_patches(h, w) // 4,
                                     lambda w, h: {"grid_thw": [int(x) for x in images(ip, w, h)["image_grid_thw"][0]]})
    # GLM-4.1V: the class defaults.
    ip = Glm4vImageProcessorPil()
    vectors["glm4.1v"] = count_rows(SIZES, lambda w, h: ip.get_number_of_image_patches(h, w) // 4,
                                    lambda w, h: {"grid_thw": [int(x) for x in images(ip, w, h)["image_grid_thw"][0]]})

    omni = Qwen2VLVideoProcessor(size=Qwen2_5OmniProcessor.videos_kwargs["size"])  # the Omni processor's video sizes
    for name, vp in (("qwen3-vl:video", Qwen3VLVideoProcessor()), ("glm4.1v:video", Glm4vVideoProcessor()), ("qwen2.5-omni:video", omni)):
        rows = []
        for frames in (1, 2, 3, 4, 8, 15, 16, 64, 300):
            for w, h in [(640, 360), (1920, 1080), (160, 120), (1280, 720), (28, 28), (3000, 200), (10, 4000)]:
                n = safe(lambda vp, f, h, w: vp.get_num_of_video_patches(f, h, w, videos_kwargs={}) // 4, vp, frames, h, w)
                rows.append({"frames": frames, "size": [w, h], **({"tokens": int(n)} if not isinstance(n, dict) else n)})
        vectors[name] = rows


def _toy_qwen_tokenizer():
    """A Qwen2Tokenizer (Qwen2's pre-tokenizer, byte-level BPE) over the 256 byte symbols, " seconds"
    (one token in the Qwen2 vocabulary) and the processors' special tokens: enough to run the
    Qwen3-VL and GLM-4.1V processors' text expansion without the hub."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    word, merges = "Ġ", []
    for c in "seconds":
        merges.append((word, c))
        word += c
        vocab[word] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tok.add_special_tokens({"additional_special_tokens": ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|image|>",
                                                          "<|video|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
                                                          "<|end_of_video|>"]})
    return tok


VIDEO_TEXT_CASES = [  # (frames_indices, fps, width, height)
    ([0, 40, 99, 150, 249], 25.0, 64, 48),
    ([0, 1], 1.0, 320, 240),
    ([0, 12, 24, 36, 48, 60, 72, 84], 24.0, 640, 360),
    ([3, 7, 11], 29.97, 100, 60),
    ([0, 30000, 60000, 89999], 30.0, 160, 90),  # an hour: four-digit seconds
    ([i * 37 for i in range(15)], 23.976, 48, 64),
    ([5, 5, 6, 900], 2.0, 32, 32),
]


def _video_text_vectors(vectors: dict) -> None:
    # The prompt text Qwen3-VL's and GLM-4.1V's processors make for a video (timestamps and markers
    # around each temporal group), from running the processors on frames with their metadata; the
    # placeholder runs are written "<|video_pad|>*N".
    from transformers import Glm4vProcessor, Qwen3VLProcessor
    from transformers.video_utils import VideoMetadata

    tok = _toy_qwen_tokenizer()
    procs = {"qwen3-vl": (Qwen3VLProcessor(image_processor=Qwen2VLImageProcessorPil(patch_size=16), tokenizer=tok, video_processor=Qwen3VLVideoProcessor()),
                          "<|vision_start|><|video_pad|><|vision_end|>", "<|video_pad|>"),
             "glm4.1v": (Glm4vProcessor(image_processor=Glm4vImageProcessorPil(), tokenizer=tok, video_processor=Glm4vVideoProcessor()),
                         "<|begin_of_video|><|video|><|end_of_video|>", "<|image|>")}
    for name, (proc, prompt, pad) in procs.items():
        rows = []
        for indices, fps, w, h in VIDEO_TEXT_CASES:
            video = np.zeros((len(indices), h, w, 3), dtype=np.uint8)
            meta = VideoMetadata(total_num_frames=max(indices) + 1, fps=fps, frames_indices=list(indices), width=w, height=h)
            out = proc(text=[prompt], videos=[video], video_metadata=[meta], do_sample_frames=False)
            text = tok.decode(out["input_ids"][0])
            rows.append({"frames_indices": indices, "fps": fps, "size": [w, h], "input_ids": len(out["input_ids"][0]),
                         "text": re.sub(f"(?:{re.escape(pad)})+", lambda m, pad=pad: f"{pad}*{len(m.group(0)) // len(pad)}", text)})
        vectors[f"{name}:video_text"] = rows


def _llama4_vectors(vectors: dict) -> None:
    # Llama 4 (meta-llama/Llama-4-Scout-17B-16E-Instruct: 336 px tiles, max_patches 16, patch 14,
    # pixel shuffle 0.5): every size from the image processor's canvas functions, REAL sizes run.

    per_tile = (336 // default(Llama4Processor, "patch_size")) ** 2 // round(1 / default(Llama4Processor, "pixel_shuffle_ratio") ** 2)
    possible = torch.tensor(llama4.find_supported_resolutions(16, SizeDict(height=336, width=336)))

    def llama4_count(w, h):
        rh, rw = (int(x) for x in llama4.get_best_fit((h, w), possible, resize_to_max_canvas=False))
        n = (rh // 336) * (rw // 336)
        return per_tile * (n + 1 if n > 1 else 1)

    ip = llama4.Llama4ImageProcessor(max_patches=16, size={"height": 336, "width": 336})

    def llama4_real(w, h):
        out = ip(arr(w, h), return_tensors="pt", input_data_format="channels_last")  # bf16 pixels: numpy cannot hold them
        rh, rw = (int(x) for x in out["aspect_ratios"][0])
        return {"real_tokens": per_tile * (rh * rw + 1 if rh * rw > 1 else 1)}

    vectors["llama4"] = count_rows(SIZES, llama4_count, llama4_real)


def _pixtral_vectors(vectors: dict, sizes=None) -> None:
    # Pixtral 12B (patch 16, longest 1024, no merge) and Mistral Small 3.1/3.2 (patch 14, longest 1540,
    # spatial merge 2). Every size: PixtralProcessor._get_num_multimodal_tokens itself (the image
    # processor's resize at patch x merge, tokens = (h // (patch * merge)) * (w // ...)). REAL sizes:
    # the image processor run with the patch size PixtralProcessor._process_images passes it.
    from transformers.models.pixtral.processing_pixtral import PixtralProcessor

    sizes = SIZES if sizes is None else sizes
    for name, patch, longest, merge in (("pixtral", 16, 1024, 1), ("mistral3", 14, 1540, 2)):
        ip = PixtralImageProcessorPil(patch_size={"height": patch, "width": patch}, size={"longest_edge": longest})
        ns = SimpleNamespace(image_processor=ip, patch_size=patch, spatial_merge_size=merge,
                             _merge_kwargs=lambda **kw: {"images_kwargs": {}})

        def pix_count(w, h, ns=ns, patch=patch, merge=merge, longest=longest):
            rh, rw = get_resize_output_image_size(arr(w, h), size=(longest, longest), patch_size=(patch * merge, patch * merge),
                                                  input_data_format="channels_last")
            if not rh or not rw:  # the fitted side floors to 0 px: the image processor cannot resize to it
                raise ValueError(f"resized to {rw}x{rh}")
            return PixtralProcessor._get_num_multimodal_tokens(ns, image_sizes=[(h, w)])["num_image_tokens"][0]

        def pix_real(w, h, ip=ip, patch=patch, merge=merge):
            out = ip(arr(w, h), return_tensors="np", input_data_format="channels_last", patch_size=patch * merge)
            rh, rw = (int(x) for x in out["image_sizes"][0])
            return {"real_tokens": (rh // (patch * merge)) * (rw // (patch * merge)), "resized": [rw, rh]}

        vectors[name] = count_rows(sizes, pix_count, pix_real)


def _gotocr2_vectors(vectors: dict) -> None:
    # Aya Vision (GotOcr2 tiling of 364 px, max 12, thumbnail; 169 a tile), InternVL3 (448, 12, 256).
    for name, tile, per in (("aya-vision", 364, 169), ("internvl3", 448, 256)):
        ip = GotOcr2ImageProcessorPil(crop_to_patches=True, min_patches=1, max_patches=12, size={"height": tile, "width": tile})
        vectors[name] = count_rows(SIZES, lambda w, h, ip=ip, per=per: per * ip.get_number_of_image_patches(h, w),
                                   lambda w, h, ip=ip, per=per: {"real_tokens": per * int(images(ip, w, h)["num_patches"][0])})


def _cohere_vectors(vectors: dict) -> None:
    # Command A Vision: class defaults (512 px, 1..12, patch 16 -> 256 a tile): its count method for
    # every size, the image processor run for REAL sizes.
    cohere = SimpleNamespace(**{k: getattr(Cohere2VisionImageProcessor, k) for k in ("min_patches", "max_patches", "size", "crop_to_patches")})
    ip = Cohere2VisionImageProcessor()
    vectors["command-a-vision"] = count_rows(
        SIZES, lambda w, h: Cohere2VisionImageProcessor.patch_size ** 2 * Cohere2VisionImageProcessor.get_number_of_image_patches(cohere, h, w),
        lambda w, h: {"real_tokens": Cohere2VisionImageProcessor.patch_size ** 2 * int(images(ip, w, h)["num_patches"][0])})


def _idefics2_vectors(vectors: dict) -> None:
    # Idefics2 with image splitting (off by default: always 64).
    ip = Idefics2ImageProcessorPil(do_image_splitting=True)
    vectors["idefics2:do_image_splitting=true"] = [
        {"size": [w, h], **safe(lambda w, h: {"tokens": 64 * int(images(ip, w, h)["pixel_values"].shape[1])}, w, h)} for w, h in REAL if w * h <= 4_500_000]


def _phi4_vectors(vectors: dict) -> None:
    # Phi-4-multimodal (class defaults: 448 px crops, dynamic_hd 36, patch 14). Every size: the
    # processor's own dynamic_preprocess with torchvision's resize and pad swapped for shape-only
    # stand-ins (the count depends on shapes alone) and _preprocess's token formula on the mask it
    # returns; REAL sizes: the whole image processor run for real (real_tokens).

    blank = torch.zeros(1, 1, 1, dtype=torch.uint8)
    shapes_only = SimpleNamespace(resize=lambda im, hw, **kw: blank.expand(3, *hw),
                                  pad=lambda im, pad, **kw: blank.expand(3, im.shape[-2] + pad[3], im.shape[-1] + pad[2]))
    P4 = phi4.Phi4MultimodalImageProcessor
    mask_size = P4.size["height"] // P4.patch_size

    def phi4_count(w, h):
        real_tvf, phi4.tvF = phi4.tvF, shapes_only
        try:
            _, mask = P4.dynamic_preprocess(P4(), blank.expand(3, h, w), P4.size["height"], P4.patch_size, mask_size, max_num=P4.dynamic_hd)
        finally:
            phi4.tvF = real_tvf
        mh, mw = mask.shape
        m = mask.reshape(mh // mask_size, mask_size, mw // mask_size, mask_size).transpose(1, 2).reshape(-1, mask_size, mask_size)
        d = m[:, 0::2, 0::2].reshape(mh // mask_size, mw // mask_size, mask_size // 2 + mask_size % 2, mask_size // 2 + mask_size % 2)
        d = d.transpose(1, 2)
        d = d.reshape(d.size(0) * d.size(1), d.size(2) * d.size(3))
        return 256 + 1 + int(d.sum().item()) + int(d[:, 0].sum().item()) + 16

    ip = P4()
    vectors["phi4-mm"] = count_rows(SIZES, phi4_count, lambda w, h: {"real_tokens": int(images(ip, w, h)["num_img_tokens"][0])})


def _ovis2_vectors(vectors: dict) -> None:
    # Ovis2: class defaults (no cropping: 256); with crop_to_patches the covering-area grid, from
    # the image processor's own function for every size and its preprocess for REAL sizes.

    seq = default(Ovis2Processor, "image_seq_length")
    side = ovis2.Ovis2ImageProcessorPil.size["height"]

    def ovis2_count(w, h):
        cols, rows = ovis2.get_min_tile_covering_grid((h, w), target_patch_size=side, max_image_tiles=12)
        return seq * (1 + rows * cols if rows * cols > 1 else 1)

    ip = ovis2.Ovis2ImageProcessorPil(crop_to_patches=True)

    def ovis2_real(w, h):
        rows, cols = (int(x) for x in images(ip, w, h)["grids"][0])
        return {"real_tokens": seq * (1 + rows * cols if rows * cols > 1 else 1)}

    vectors["ovis2:crop_to_patches=true"] = count_rows(SIZES, ovis2_count, ovis2_real)
    vectors["ovis2"] = [{"size": [w, h], "tokens": seq} for w, h in SIZES]


def _molmo_vectors(vectors: dict) -> None:
    # Molmo2 (the Molmo processor in transformers; class defaults): get_image_grid_and_crops for
    # every size, the image processor run for REAL sizes; tokens = low-res + high-res pooled grids.

    ip = Molmo2ImageProcessor()

    def molmo_tokens(grid):
        low_h, low_w, high_h, high_w = (int(x) for x in grid)
        return low_h * low_w + high_h * high_w

    vectors["molmo"] = count_rows(SIZES, lambda w, h: molmo_tokens(ip.get_image_grid_and_crops(h, w, {})[0]),
                                  lambda w, h: {"real_tokens": molmo_tokens(ip(arr(w, h), return_tensors="pt",
                                                                               input_data_format="channels_last")["image_grids"][0])})


def _fixed_vectors(vectors: dict) -> None:
    # Fixed-length encoders: the processors' own defaults and the release configs' image_seq_length.

    fixed = {"deepseek-vl": default(DeepseekVLProcessor, "num_image_tokens"), "janus": default(JanusProcessor, "num_image_tokens"),
             "gemma3n": default(Gemma3nProcessor, "image_seq_length"), "idefics2": default(Idefics2Processor, "image_seq_len"),
             "florence2": 577, "paligemma-224": (224 // 14) ** 2, "paligemma-448": (448 // 14) ** 2, "paligemma-896": (896 // 14) ** 2}
    for name, n in fixed.items():
        vectors[name] = [{"size": [w, h], "tokens": n} for w, h in SIZES]


def minicpmv_remote_code(snapshot: str):
    """The snapshot's image_processing_minicpmv.py, imported as a module of a package named after
    the folder (so a relative import inside it resolves there), and its preprocessor_config.json."""
    folder = Path(snapshot).resolve()
    package = types.ModuleType("minicpmv_remote")
    package.__path__ = [str(folder)]
    sys.modules["minicpmv_remote"] = package
    spec = importlib.util.spec_from_file_location("minicpmv_remote.image_processing_minicpmv", folder / "image_processing_minicpmv.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    config = json.loads((folder / "preprocessor_config.json").read_text())
    return module, {k: v for k, v in config.items() if k not in ("auto_map", "image_processor_type", "processor_class")}


def _minicpmv_meta(snapshot: str) -> dict:
    """What the MiniCPM-V vectors were made from: the remote code's and config's sha256."""
    import hashlib

    folder = Path(snapshot)
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
            for name in ("image_processing_minicpmv.py", "preprocessor_config.json")}


def _minicpmv_vectors(vectors: dict, snapshot: str) -> None:
    # MiniCPM-V 4.x: the remote code's own MiniCPMVImageProcessor, built from the snapshot's config.
    # Every size: the text get_slice_image_placeholder makes for the image (processing_minicpmv.py
    # puts it in place of the image tag): tokens are its <unk> placeholders, wrapper tokens its
    # special tokens plus its other characters (the image id's digits and the newlines between
    # slice rows, one token each). REAL sizes: the image processor's own preprocess on a PIL image
    # (real_tokens: image_feature_size for each picture it gives the encoder, the image + slices).
    from PIL import Image

    module, config = minicpmv_remote_code(snapshot)
    cls = module.MiniCPMVImageProcessor

    def rows_for(ip, sizes, max_slice_nums=None, use_image_id=None):
        specials = [ip.im_start_token, ip.im_end_token, ip.slice_start_token, ip.slice_end_token, ip.im_id_start, ip.im_id_end]
        special = re.compile("|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True)))

        def count(w, h):
            text = ip.get_slice_image_placeholder((w, h), 0, max_slice_nums, use_image_id)
            rest, n_special = special.subn("", text.replace(ip.unk_token, ""))
            grid = ip.get_sliced_grid((w, h), max_slice_nums or ip.max_slice_nums) if ip.slice_mode else None
            return {"tokens": text.count(ip.unk_token), "wrapper_tokens": n_special + len(rest),
                    "rows_cols": [grid[1], grid[0]] if grid else [0, 0]}

        def run(w, h):
            try:
                out = ip.preprocess(Image.new("RGB", (w, h)), max_slice_nums=max_slice_nums)
            except RuntimeError as e:  # torch's unfold: an unresized image smaller than a patch
                raise ValueError(str(e)) from None
            pictures, tgt = out["pixel_values"][0], out["tgt_sizes"][0]
            got = {"real_tokens": ip.image_feature_size * len(pictures)}
            if ip.slice_mode:
                grid = ip.get_sliced_grid((w, h), max_slice_nums or ip.max_slice_nums)
                th, tw = (int(x) * ip.patch_size for x in tgt[-1])  # the last slice (or the image when not sliced)
                got["resized"] = [tw * grid[0], th * grid[1]] if grid else [tw, th]
            return got

        rows = count_rows(sizes, count, run)
        for row in rows:
            assert "error" in row or "real_tokens" not in row or row["real_tokens"] == row["tokens"], row
        return rows

    ip = cls(**config)
    vectors["minicpm-v4"] = rows_for(ip, SIZES)
    vectors["minicpm-v4:max_slice_nums=4"] = rows_for(ip, SIZES, max_slice_nums=4)
    vectors["minicpm-v4:use_image_id=false"] = rows_for(ip, SIZES, use_image_id=False)
    vectors["minicpm-v4:slice_mode=false"] = rows_for(cls(**{**config, "slice_mode": False}), [s for s in REAL if s[0] * s[1] <= 4_500_000])

    # Video as vLLM's MiniCPM-V processor builds its prompt (get_video_prompt_texts): each frame the
    # image placeholder at max_slice_nums 1 without an image id; a size the image processor's own
    # preprocess of a frame refuses is refused.
    rows = []
    for w, h in [(640, 360), (1920, 1080), (160, 120), (1280, 720), (28, 28), (3000, 200), (10, 4000), (100, 3)]:
        refused = safe(lambda w, h: ip.preprocess(Image.new("RGB", (w, h)), max_slice_nums=1), w, h)
        per_frame = ip.get_slice_image_placeholder((w, h), 0, 1, False).count(ip.unk_token)
        for frames in (1, 2, 3, 4, 8, 15, 16, 64, 300):
            got = refused if isinstance(refused, dict) and "error" in refused else {"tokens": frames * per_frame}
            rows.append({"frames": frames, "size": [w, h], **got})
    vectors["minicpm-v4:video"] = rows


def _minicpmv46_vectors(vectors: dict) -> None:
    # MiniCPM-V 4.6: transformers' own MiniCPMV4_6ImageProcessorPil (class defaults) and its
    # processor's replace_image_token, which writes the placeholder text from the image processor's
    # target sizes and grid. Every size: the text made from a shape-only run of the image processor's
    # own get_sliced_grid / find_best_resize / get_refine_size (as _preprocess composes them); REAL
    # sizes: its whole preprocess on an array (real_tokens). Tokens are the image tokens of the text,
    # wrapper tokens its other tokens (markers, the image id's digit, the newlines between slice rows).
    from transformers.models.minicpmv4_6.image_processing_pil_minicpmv4_6 import MiniCPMV4_6ImageProcessorPil
    from transformers.models.minicpmv4_6.processing_minicpmv4_6 import MiniCPMV4_6Processor

    marks = dict(image_token="<I>", image_start_token="<image>", image_end_token="</image>", slice_start_token="<slice>",
                 slice_end_token="</slice>")

    def rows_for(ip, sizes, downsample_mode="16x", use_image_id=True):
        ns = SimpleNamespace(slice_mode=ip.slice_mode, **marks)
        divisor = 4 if downsample_mode == "4x" else 16

        def placeholder(out):
            text = MiniCPMV4_6Processor.replace_image_token(ns, out, 0, image_token_divisor=divisor)
            text = ("<image_id>0</image_id>" if use_image_id else "") + text
            rest = re.sub("<I>|</?image>|</?slice>|</?image_id>", "", text)
            n_marks = len(re.findall("</?image>|</?slice>|</?image_id>", text))
            return {"tokens": text.count("<I>"), "wrapper_tokens": n_marks + len(rest)}

        def shapes(w, h):  # _preprocess's sizes without pixels
            grid = ip.get_sliced_grid((h, w), ip.max_slice_nums, ip.scale_resolution) if ip.slice_mode else None
            sh, sw = ip.find_best_resize((h, w), ip.scale_resolution, ip.patch_size, downsample_mode, allow_upscale=grid is None)
            ts = [[sh // ip.patch_size, sw // ip.patch_size]]
            if grid is not None:
                rh, rw = ip.get_refine_size((h, w), grid, ip.scale_resolution, ip.patch_size, downsample_mode, allow_upscale=True)
                ts += [[rh // grid[0] // ip.patch_size, rw // grid[1] // ip.patch_size]] * (grid[0] * grid[1])
            out = {"grids": [grid or [0, 0]], "num_patches_per_image": [len(ts)], "target_sizes": np.array(ts)}
            return {**placeholder(out), "rows_cols": list(grid or [0, 0])}

        def real(w, h):
            out = ip(arr(w, h), return_tensors="np", input_data_format="channels_last", downsample_mode=downsample_mode)
            return {"real_tokens": placeholder(out)["tokens"]}

        rows = count_rows(sizes, shapes, real)
        for row in rows:
            assert "error" in row or "real_tokens" not in row or row["real_tokens"] == row["tokens"], row
        return rows

    ip = MiniCPMV4_6ImageProcessorPil()
    vectors["minicpm-v-4.6"] = rows_for(ip, SIZES25)
    vectors["minicpm-v-4.6:downsample_mode=4x"] = rows_for(ip, SIZES, "4x")
    vectors["minicpm-v-4.6:use_image_id=false"] = rows_for(ip, SIZES[:40], use_image_id=False)


def _qwen3_cap_vectors(vectors: dict) -> None:
    # Qwen3-VL video with cap_pixels_per_frame (qwen-vl-utils' per-frame cap): the video processor's
    # own get_num_of_video_patches, over frame counts and random sizes up to 8000 px.
    vp = Qwen3VLVideoProcessor()
    sizes = [(640, 360), (1920, 1080), (1280, 720), (160, 120), (28, 28), (3000, 200), (10, 4000), (7999, 41), (8000, 8000)]
    sizes += [(rng.randint(1, 8000), rng.randint(1, 8000)) for _ in range(12)]
    rows = []
    for frames in (2, 3, 4, 8, 16, 64, 250, 768):
        for w, h in sizes:
            n = safe(lambda f, h, w: vp.get_num_of_video_patches(f, h, w, videos_kwargs={"cap_pixels_per_frame": True}) // 4, frames, h, w)
            rows.append({"frames": frames, "size": [w, h], **({"tokens": int(n)} if not isinstance(n, dict) else n)})
    vectors["qwen3-vl:video:cap_pixels_per_frame=true"] = rows


def issue25(vectors: dict) -> None:
    """Issue 25: mistral3 (and pixtral) at the processor's patch x merge rounding, MiniCPM-V 4.6, Qwen3-VL's per-frame cap."""
    _pixtral_vectors(vectors, SIZES25)
    _minicpmv46_vectors(vectors)
    _qwen3_cap_vectors(vectors)


SECONDS = [1, 1.5, 2.7, 5, 10, 29.99, 30, 30.01, 45, 60, 90.5, 119.99, 120]


def frontier(vectors: dict) -> None:
    """The 2025 families (issue 14): each processor class built from its config values in code."""
    for part in (_qwen3_glm, _video_text_vectors, _llama4_vectors, issue25, _gotocr2_vectors, _cohere_vectors, _idefics2_vectors, _phi4_vectors, _ovis2_vectors, _molmo_vectors, _fixed_vectors):
        part(vectors)


def default(cls, name):
    """A processor's own default for an __init__ argument."""
    return inspect.signature(cls.__init__).parameters[name].default


def audio(vectors: dict) -> None:
    """Audio tokens for 1 s to 2 min clips, from the feature extractors run on that many samples."""


    whisper_fe, phi4_fe = WhisperFeatureExtractor(), Phi4MultimodalFeatureExtractor()
    rows = {k: [] for k in ("whisper", "whisper:chunked=true", "qwen2-audio", "qwen2-audio:chunked=true", "qwen2.5-omni", "phi4-mm",
                            "gemma3n:audio")}
    for sec in SECONDS:
        n = round(sec * 16000)
        wave = np.zeros(n, dtype=np.float32)
        # Whisper: the feature extractor pads or truncates the clip to 3000 frames (its default call);
        # chunked, each 30 s window so; the encoder's stride-2 conv halves the frames.
        rows["whisper"].append({"seconds": sec, "tokens": whisper_fe(wave, sampling_rate=16000)["input_features"].shape[-1] // 2})
        windows = [wave[i : i + whisper_fe.n_samples] for i in range(0, n, whisper_fe.n_samples)]
        rows["whisper:chunked=true"].append({"seconds": sec, "tokens": sum(whisper_fe(w, sampling_rate=16000)["input_features"].shape[-1] // 2 for w in windows)})
        per_window = [int(whisper_fe(w, sampling_rate=16000, return_attention_mask=True, padding="max_length")["attention_mask"].sum(-1)[0]) for w in windows]
        rows["qwen2-audio:chunked=true"].append({"seconds": sec, "tokens": sum(int(_get_feat_extract_output_lengths(np.array(f))) for f in per_window)})
        # Qwen2-Audio / Qwen2.5-Omni: the processors' _process_audio (padding max_length, attention mask).
        mask = whisper_fe(wave, sampling_rate=16000, return_attention_mask=True, padding="max_length")["attention_mask"]
        frames = int(mask.sum(-1)[0])
        rows["qwen2-audio"].append({"seconds": sec, "tokens": (((frames - 1) // 2 + 1) - 2) // 2 + 1})
        rows["qwen2.5-omni"].append({"seconds": sec, "tokens": int(_get_feat_extract_output_lengths(np.array(frames)))})
        rows["phi4-mm"].append({"seconds": sec, "tokens": int(phi4_fe(wave, sampling_rate=16000)["audio_embed_sizes"][0])})
        rows["gemma3n:audio"].append({"seconds": sec, "tokens": inspect.signature(Gemma3nProcessor.__init__).parameters["audio_seq_length"].default})
    vectors["audio"] = rows


def _llava15_vectors(vectors: dict) -> None:
    # LLaVA-1.5: CLIP 336 crop, (336 // 14)^2 + 1 CLS - 1 (strategy default) (processing_llava.py)
    vectors["llava-1.5"] = [{"size": [w, h], "tokens": (336 // 14) ** 2} for w, h in SIZES]


def _llava_next_vectors(vectors: dict) -> None:
    # LLaVA-NeXT (llava-hf/llava-v1.6-mistral-7b-hf): pinpoints, 336 tiles, CLS removed.
    ip = LlavaNextImageProcessorPil(image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
                                    size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    count = llava_next_like(LlavaNextProcessor, ip, patch_size=14, extra=1, strategy="default")
    rows = []
    for w, h in SIZES:
        row = {"size": [w, h], "tokens": count(w, h, 336)}
        if (w, h) in REAL and w * h <= 4_500_000:
            pv = ip(arr(w, h), return_tensors="np", input_data_format="channels_last")
            row["patches"] = int(pv["pixel_values"].shape[1])  # base + tiles
        rows.append(row)
    vectors["llava-next"] = rows


def _llava_ov_vectors(vectors: dict) -> None:
    # LLaVA-OneVision (llava-hf/llava-onevision-qwen2-7b-ov-hf): 729 tokens, anyres_max_9, strategy full.
    ip = LlavaOnevisionImageProcessorPil()
    count = llava_next_like(LlavaOnevisionProcessor, ip, num_image_tokens=729, vision_aspect_ratio="anyres_max_9", strategy="full")
    vectors["llava-onevision"] = [{"size": [w, h], "tokens": count(w, h, 384)} for w, h in SIZES]


def _qwen2_vectors(vectors: dict) -> None:
    # Qwen2-VL / Qwen2.5-VL: the hub preprocessor config's min/max pixels.
    ip = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056, patch_size=14, merge_size=2, temporal_patch_size=2)
    rows = []
    for w, h in SIZES:
        n = safe(lambda h, w: ip.get_number_of_image_patches(h, w) // 4, h, w)
        row = {"size": [w, h], "tokens": n} if isinstance(n, int) else {"size": [w, h], **n}
        if isinstance(n, int) and (w, h) in REAL and w * h <= 4_500_000:
            thw = ip(arr(w, h), return_tensors="np", input_data_format="channels_last")["image_grid_thw"][0]
            row["grid_thw"] = [int(x) for x in thw]
            assert int(np.prod(thw)) // 4 == n
        rows.append(row)
    vectors["qwen2-vl"] = rows
    ip_small = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=1003520)
    vectors["qwen2-vl:max_pixels=1003520"] = [
        ({"size": [w, h], "tokens": n} if isinstance(n := safe(lambda h, w: ip_small.get_number_of_image_patches(h, w) // 4, h, w), int) else {"size": [w, h], **n})
        for w, h in SIZES]

    vp = Qwen2VLVideoProcessor()
    vrows = []
    for frames in (1, 2, 3, 8, 15, 16, 64):
        for w, h in [(640, 360), (1920, 1080), (160, 120), (1280, 720), (28, 28), (3000, 200)]:
            n = vp.get_num_of_video_patches(frames, h, w, videos_kwargs={}) // 4
            vrows.append({"frames": frames, "size": [w, h], "tokens": int(n)})
    vectors["qwen2-vl:video"] = vrows


def _internvl_vectors(vectors: dict) -> None:
    # InternVL 2.5: GotOcr2-style tiling (448 px, 1..12 tiles, thumbnail), 256 tokens a tile.
    ip = GotOcr2ImageProcessorPil(crop_to_patches=True, min_patches=1, max_patches=12, size={"height": 448, "width": 448})
    rows = []
    for w, h in SIZES:
        patches = ip.get_number_of_image_patches(h, w)
        row = {"size": [w, h], "tokens": 256 * patches}
        if (w, h) in REAL and w * h <= 4_500_000:
            out = ip(arr(w, h), return_tensors="np", input_data_format="channels_last")
            row["real_patches"] = int(out["num_patches"][0])
            assert row["real_patches"] == patches
        rows.append(row)
    vectors["internvl2.5"] = rows


def _idefics3_vectors(vectors: dict) -> None:
    # Idefics3 / SmolVLM: run the real preprocess (rows/cols of the split), then seq_len per image.
    for name, longest, tile, seq in (("idefics3", 1456, 364, 169), ("smolvlm", 1536, 384, 81), ("smolvlm-256m", 2048, 512, 64)):
        cls = Idefics3ImageProcessorPil if name == "idefics3" else SmolVLMImageProcessorPil
        ip = cls(size={"longest_edge": longest}, max_image_size={"longest_edge": tile}, do_image_splitting=True)
        rows = []
        for w, h in SIZES:
            helper = ip.get_number_of_image_patches(h, w)
            row = {"size": [w, h], "helper_patches": list(helper)}
            if (w, h) in REAL:
                out = ip(arr(w, h), return_tensors="np", input_data_format="channels_last", return_row_col_info=True)
                r, c = int(out["rows"][0][0]), int(out["cols"][0][0])
                row["rows_cols"] = [r, c]
                row["tokens"] = seq * (r * c + 1) if r else seq
            rows.append(row)
        vectors[name] = rows


def _gemma3_vectors(vectors: dict) -> None:
    # Gemma 3 with pan-and-scan on (google/gemma-3-4b-it arguments); off, it is always 256.
    ip = Gemma3ImageProcessorPil(size={"height": 896, "width": 896}, do_pan_and_scan=True, pan_and_scan_min_crop_size=256,
                                 pan_and_scan_max_num_crops=4, pan_and_scan_min_ratio_to_activate=1.2)
    rows = []
    for w, h in REAL:
        out = ip(arr(w, h), return_tensors="np", input_data_format="channels_last")
        crops = int(out["num_crops"][0])
        rows.append({"size": [w, h], "tokens": 256 * (1 + crops), "crops": crops})
    vectors["gemma3:do_pan_and_scan=true"] = rows
    vectors["gemma3"] = [{"size": [w, h], "tokens": 256} for w, h in SIZES]


def main() -> None:
    snapshot = os.environ.get("MINICPMV_REMOTE_CODE")
    if sys.argv[1:] == ["--minicpmv"]:  # remake only MiniCPM-V's vectors, from its remote code
        if not snapshot:
            sys.exit("--minicpmv needs MINICPMV_REMOTE_CODE=/path/to/a MiniCPM-V 4.x snapshot")
        data = json.loads(OUT.read_text())
        _minicpmv_vectors(data["vectors"], snapshot)
        data["meta"]["minicpmv"] = _minicpmv_meta(snapshot)
        OUT.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(f"wrote {OUT} (MiniCPM-V vectors from {snapshot}, transformers {transformers.__version__})")
        return
    if sys.argv[1:] == ["--video-text"]:  # remake only the video prompt texts, keep the rest
        data = json.loads(OUT.read_text())
        _video_text_vectors(data["vectors"])
        OUT.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(f"wrote {OUT} (video text vectors, transformers {transformers.__version__})")
        return
    if sys.argv[1:] == ["--issue25"]:  # remake only issue 25's vectors, keep the rest
        data = json.loads(OUT.read_text())
        issue25(data["vectors"])
        audio(data["vectors"])
        data["meta"]["issue25"] = {"transformers": transformers.__version__}
        OUT.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(f"wrote {OUT} (issue 25 vectors, transformers {transformers.__version__})")
        return
    if sys.argv[1:] == ["--frontier"]:  # remake only the frontier vectors, keep the rest
        data = json.loads(OUT.read_text())
        frontier(data["vectors"])
        audio(data["vectors"])
        if snapshot:
            _minicpmv_vectors(data["vectors"], snapshot)
            data["meta"]["minicpmv"] = _minicpmv_meta(snapshot)
        OUT.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(f"wrote {OUT} (frontier vectors, transformers {transformers.__version__})")
        return

    vectors: dict[str, list] = {}
    for part in (_llava15_vectors, _llava_next_vectors, _llava_ov_vectors, _qwen2_vectors, _internvl_vectors, _idefics3_vectors, _gemma3_vectors):
        part(vectors)

    # Hosted APIs: the documentation's worked examples.
    vectors["gpt-4o"] = [{"size": [1024, 1024], "tokens": 765}, {"size": [2048, 4096], "tokens": 1105},
                         {"size": [4096, 8192], "options": {"detail": "low"}, "tokens": 85}]
    vectors["gpt-4o-mini"] = [{"size": [1024, 1024], "tokens": 2833 + 4 * 5667}, {"size": [4096, 8192], "options": {"detail": "low"}, "tokens": 2833}]
    vectors["gpt-4.1-mini"] = [{"size": [1024, 1024], "tokens": 1024, "billed": 1658.88}, {"size": [1800, 2400], "tokens": 1452, "billed": 2352.24}]
    vectors["claude-3"] = [{"size": [200, 200], "tokens": 54}, {"size": [1000, 1000], "tokens": 1334}, {"size": [1092, 1092], "tokens": 1590}]
    vectors["gemini"] = [{"size": [384, 384], "tokens": 258}, {"size": [100, 300], "tokens": 258}]

    frontier(vectors)
    audio(vectors)
    old = json.loads(OUT.read_text()) if OUT.exists() else {"meta": {}, "vectors": {}}
    if snapshot:
        _minicpmv_vectors(vectors, snapshot)
    else:  # no snapshot named: keep the stored MiniCPM-V vectors
        vectors.update({k: v for k, v in old["vectors"].items() if k.startswith("minicpm-v4")})

    meta = {"transformers": transformers.__version__, "python": sys.version.split()[0], "script": "tests/budget_vectors/make_vectors.py"}
    if snapshot or "minicpmv" in old["meta"]:
        meta["minicpmv"] = _minicpmv_meta(snapshot) if snapshot else old["meta"]["minicpmv"]
    OUT.write_text(json.dumps({"meta": meta, "vectors": vectors}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT} ({sum(len(v) for v in vectors.values())} vectors, transformers {transformers.__version__})")


if __name__ == "__main__":
    main()
