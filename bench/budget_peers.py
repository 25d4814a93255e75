"""budget beside its peers on the same sizes: LiteLLM's image-token estimator (the hosted APIs) and
transformers' own `_get_num_multimodal_tokens` (mistral3 / pixtral, through PixtralProcessor).
Prints, per model, how many sizes disagree with budget and the largest gap, a few disagreeing
sizes, and the speed of each peer against budget's as a ratio measured in this one run.

    pip install -e '.[peers]'      # litellm (kept out of the base and dev dependencies)
    python bench/budget_peers.py [--sizes N]
"""

from __future__ import annotations

import argparse
import base64
import random
import struct
import time
import zlib

from vlmtool.budget.registry import get

# budget preset -> LiteLLM model name (LiteLLM picks its rule from the name)
LITELLM = {"gpt-4o": "gpt-4o", "gpt-4o-mini": "gpt-4o-mini", "gpt-4.1": "gpt-4.1", "o3": "o3", "gpt-5": "gpt-5",
           "gpt-4.1-mini": "gpt-4.1-mini", "gpt-4.1-nano": "gpt-4.1-nano", "o4-mini": "o4-mini", "gpt-5-mini": "gpt-5-mini",
           "claude-4.7": "claude-opus-4-7", "claude-4.5": "claude-sonnet-4-5"}


def png_uri(w: int, h: int) -> str:
    """A data URI holding only a PNG signature and IHDR: all a header reader needs."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + chunk).decode()


def sizes(n: int) -> list[tuple[int, int]]:
    rng = random.Random(25)
    out = [(rng.randint(1, 8000), rng.randint(1, 8000)) for _ in range(n)]
    return out + [(8000, 1), (1, 8000), (8000, 29), (1540, 1), (1, 1), (27, 27), (28, 1), (1024, 1024), (1800, 2400), (1920, 1080)]


def budget_counts(preset: str, szs) -> list[float]:
    rule = get(preset).image
    return [rule(w, h).billed_tokens for w, h in szs]  # the rule itself: no plan cache


def litellm_counts(model: str, uris) -> list[float]:
    from litellm.litellm_core_utils.token_counter import estimate_image_tokens

    return [estimate_image_tokens(model, u, "high") for u in uris]


def transformers_counts(preset: str, szs) -> list[float | None]:
    from types import SimpleNamespace

    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil
    from transformers.models.pixtral.processing_pixtral import PixtralProcessor

    patch, longest, merge = {"mistral3": (14, 1540, 2), "pixtral": (16, 1024, 1)}[preset]
    ip = PixtralImageProcessorPil(patch_size={"height": patch, "width": patch}, size={"longest_edge": longest})
    ns = SimpleNamespace(image_processor=ip, patch_size=patch, spatial_merge_size=merge, _merge_kwargs=lambda **kw: {"images_kwargs": {}})
    return [PixtralProcessor._get_num_multimodal_tokens(ns, image_sizes=[(h, w)])["num_image_tokens"][0] for w, h in szs]


def _timed(fn, first, rest):
    fn(first, rest[:2])  # imports and first-call set-up stay out of the timing
    t = time.perf_counter()
    out = fn(first, rest)
    return out, time.perf_counter() - t


def _row(name: str, peer: str, szs, ours, theirs, t_ours: float, t_peer: float) -> str:
    diff = [(s, a, b) for s, a, b in zip(szs, ours, theirs) if b is not None and abs(a - b) > 0.01]
    gap = max((abs(a - b) for _, a, b in diff), default=0)
    ex = ", ".join(f"{w}x{h}: {a:g} vs {b:g}" for (w, h), a, b in diff[:3])
    return f"| `{name}` | {peer} | {len(diff)}/{len(szs)} | {gap:g} | {ex} | {t_peer / t_ours:.1f}x |"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, default=300)
    ap.add_argument("--tiny", action="store_true", help="10 sizes: the plumbing (CI), not the figures")
    a = ap.parse_args()
    szs = sizes(10 if a.tiny else a.sizes)
    uris = [png_uri(w, h) for w, h in szs]
    print("| preset | peer | sizes that differ | largest gap | e.g. (budget vs peer) | peer time / budget time |")
    print("|---|---|---|---|---|---|")
    for preset, model in LITELLM.items():
        ours, t_ours = _timed(budget_counts, preset, szs)
        theirs, t_peer = _timed(litellm_counts, model, uris)
        print(_row(preset, f"LiteLLM `{model}`", szs, ours, theirs, t_ours, t_peer))
    for preset in ("mistral3", "pixtral"):
        ok = [s for s in szs if max(s) / min(s) < 1000]  # past that the fitted side is 0 px: transformers' count is 0, its processor refuses
        ours, t_ours = _timed(budget_counts, preset, ok)
        theirs, t_peer = _timed(transformers_counts, preset, ok)
        print(_row(preset, "transformers `_get_num_multimodal_tokens`", ok, ours, theirs, t_ours, t_peer))


if __name__ == "__main__":
    main()
