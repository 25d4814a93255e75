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
"""

from __future__ import annotations

import functools
import json
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import transformers

OUT = Path(__file__).with_name("vectors.json")

SIZES = [(1, 1), (1, 2), (2, 1), (13, 13), (14, 14), (27, 27), (28, 28), (29, 57), (100, 100), (224, 224), (336, 336),
         (337, 336), (336, 337), (384, 384), (448, 448), (640, 480), (480, 640), (800, 600), (1024, 1024), (1280, 720),
         (1920, 1080), (1080, 1920), (2048, 4096), (4000, 3000), (10000, 10000), (10000, 50), (50, 10000), (200, 1),
         (1, 200), (201, 1), (10000, 1), (1, 10000), (3, 10000), (10000, 57), (9999, 9998), (1456, 1456), (1457, 729),
         (364, 728), (729, 1456)]
rng = random.Random(0)
SIZES += [(rng.randint(1, 4000), rng.randint(1, 4000)) for _ in range(40)]
SIZES += [(rng.randint(100, 800), rng.randint(100, 800)) for _ in range(20)]
# Real preprocessing runs on arrays of these (w*h bounded so generation stays quick).
REAL = [s for s in SIZES if s[0] * s[1] <= 4_500_000] + [(10000, 10000)]


def arr(w, h):
    return np.zeros((h, w, 3), dtype=np.uint8)


def safe(fn):
    try:
        return fn()
    except ValueError as e:
        return {"error": str(e)}


def llava_next_like(proc_cls, image_processor, num_image_tokens=None, patch_size=14, vision_aspect_ratio=None, extra=1, strategy="default"):
    ns = SimpleNamespace(image_processor=image_processor, patch_size=patch_size, num_additional_image_tokens=extra,
                         num_image_tokens=num_image_tokens, vision_aspect_ratio=vision_aspect_ratio)
    ns._get_unpadded_features = functools.partial(proc_cls._get_unpadded_features, ns)

    def count(w, h, tile):
        n = proc_cls._get_number_of_features(ns, h, w, tile, tile)
        return n - 1 if strategy == "default" else n

    return count


def main() -> None:
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
    from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil
    from transformers.models.llava_onevision.processing_llava_onevision import LlavaOnevisionProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    vectors: dict[str, list] = {}

    # LLaVA-1.5: CLIP 336 crop, (336 // 14)^2 + 1 CLS - 1 (strategy default) (processing_llava.py)
    vectors["llava-1.5"] = [{"size": [w, h], "tokens": (336 // 14) ** 2} for w, h in SIZES]

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

    # LLaVA-OneVision (llava-hf/llava-onevision-qwen2-7b-ov-hf): 729 tokens, anyres_max_9, strategy full.
    ip = LlavaOnevisionImageProcessorPil()
    count = llava_next_like(LlavaOnevisionProcessor, ip, num_image_tokens=729, vision_aspect_ratio="anyres_max_9", strategy="full")
    vectors["llava-onevision"] = [{"size": [w, h], "tokens": count(w, h, 384)} for w, h in SIZES]

    # Qwen2-VL / Qwen2.5-VL: the hub preprocessor config's min/max pixels.
    ip = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056, patch_size=14, merge_size=2, temporal_patch_size=2)
    rows = []
    for w, h in SIZES:
        n = safe(lambda: ip.get_number_of_image_patches(h, w) // 4)
        row = {"size": [w, h], "tokens": n} if isinstance(n, int) else {"size": [w, h], **n}
        if isinstance(n, int) and (w, h) in REAL and w * h <= 4_500_000:
            thw = ip(arr(w, h), return_tensors="np", input_data_format="channels_last")["image_grid_thw"][0]
            row["grid_thw"] = [int(x) for x in thw]
            assert int(np.prod(thw)) // 4 == n
        rows.append(row)
    vectors["qwen2-vl"] = rows
    ip_small = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=1003520)
    vectors["qwen2-vl:max_pixels=1003520"] = [
        ({"size": [w, h], "tokens": n} if isinstance(n := safe(lambda: ip_small.get_number_of_image_patches(h, w) // 4), int) else {"size": [w, h], **n})
        for w, h in SIZES]

    vp = Qwen2VLVideoProcessor()
    vrows = []
    for frames in (1, 2, 3, 8, 15, 16, 64):
        for w, h in [(640, 360), (1920, 1080), (160, 120), (1280, 720), (28, 28), (3000, 200)]:
            n = vp.get_num_of_video_patches(frames, h, w, videos_kwargs={}) // 4
            vrows.append({"frames": frames, "size": [w, h], "tokens": int(n)})
    vectors["qwen2-vl:video"] = vrows

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

    # Hosted APIs: the documentation's worked examples.
    vectors["gpt-4o"] = [{"size": [1024, 1024], "tokens": 765}, {"size": [2048, 4096], "tokens": 1105},
                         {"size": [4096, 8192], "options": {"detail": "low"}, "tokens": 85}]
    vectors["gpt-4o-mini"] = [{"size": [1024, 1024], "tokens": 2833 + 4 * 5667}, {"size": [4096, 8192], "options": {"detail": "low"}, "tokens": 2833}]
    vectors["gpt-4.1-mini"] = [{"size": [1024, 1024], "tokens": 1024, "billed": 1658.88}, {"size": [1800, 2400], "tokens": 1452, "billed": 2352.24}]
    vectors["claude"] = [{"size": [200, 200], "tokens": 54}, {"size": [1000, 1000], "tokens": 1334}, {"size": [1092, 1092], "tokens": 1590}]
    vectors["gemini"] = [{"size": [384, 384], "tokens": 258}, {"size": [100, 300], "tokens": 258}]

    meta = {"transformers": transformers.__version__, "python": sys.version.split()[0], "script": "tests/budget_vectors/make_vectors.py"}
    OUT.write_text(json.dumps({"meta": meta, "vectors": vectors}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT} ({sum(len(v) for v in vectors.values())} vectors, transformers {transformers.__version__})")


if __name__ == "__main__":
    main()
