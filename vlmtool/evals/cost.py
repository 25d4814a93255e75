"""What a checkpoint costs per sample, for the connector comparison: visual tokens in the LM's
sequence, KV-cache bytes for them, and the seconds it trained. Read from the checkpoint folder's
config.json and checkpoint.json (no weights loaded); each connector's cost model is its class's
(vlm/connectors.py), this module gives it the tower's token count:

- mlp (LLaVA-1.5): one LM position per visual feature, T_v from the vision tower recorded in
  checkpoint.json (`tokens`, or budget's llava-1.5 count with the tower's image_size and
  patch_size, (image_size / patch_size)^2, plus the CLS token when kept), as encode counts a
  single view (AnyRes tiles add more per sample);
- native (Fuyu): (image_size / patch_size)^2 patch positions plus one row-newline per row;
- xattn (Flamingo): no visual position in the LM sequence; the cross-attention layers keep K and
  V of the T_v features instead, which is what its KV bytes count.
KV bytes are `vlmtool.budget.dataset.kv_cache_bytes` (2 x layers x kv_heads x head_dim x bytes
x tokens) in bf16. An Answerer that knows better may carry `visual_tokens` (an int). A checkpoint
that names no known connector is costed as a slot connector on the tower's features.
"""

from __future__ import annotations

import json
from pathlib import Path

def _json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def tower_tokens(tower: dict | None) -> int | None:
    """Visual features per image of a feature-shard tower reference, when it says."""
    if not isinstance(tower, dict):
        return None
    for k in ("tokens", "tokens_per_image", "n_tokens"):
        if isinstance(tower.get(k), int):
            return tower[k]
    size, patch = tower.get("image_size"), tower.get("patch_size")
    if isinstance(size, int) and isinstance(patch, int) and 0 < patch <= size:
        from vlmtool.budget import image_tokens

        # one fixed-resolution view, as encode counts it: LLaVA-1.5's rule with the tower's sizes
        return image_tokens("llava-1.5", size, size, image_size=size, patch_size=patch) + (1 if tower.get("cls") else 0)
    return None


def train_seconds(folder: Path, extra: dict) -> float | None:
    """From checkpoint.json's extra (`train_seconds` or `seconds`), else the last row of the
    folder's train_log.jsonl that has `seconds` or `elapsed_s`; else None."""
    for k in ("train_seconds", "seconds"):
        if isinstance(extra.get(k), (int, float)):
            return float(extra[k])
    log = folder / "train_log.jsonl"
    if not log.is_file():
        return None
    best = None
    for line in log.read_text(errors="replace").splitlines()[-1000:]:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        for k in ("seconds", "elapsed_s"):
            if isinstance(row, dict) and isinstance(row.get(k), (int, float)):
                best = float(row[k])
    return best


def model_cost(checkpoint: str | Path | None, answerer=None) -> dict:
    """connector, visual_tokens, kv_cache_bytes (per sample) and train_seconds; None where unknown."""
    from vlmtool.vlm.connectors import CONNECTORS, KV_DTYPE, Connector

    folder = Path(checkpoint) if checkpoint else None
    cfg = _json(folder / "config.json") if folder else {}
    meta = _json(folder / "checkpoint.json") if folder else {}
    extra = meta.get("extra") if isinstance(meta.get("extra"), dict) else {}
    connector = cfg.get("connector")
    t_v = getattr(answerer, "visual_tokens", None)
    t_v = t_v if isinstance(t_v, int) else tower_tokens(meta.get("tower"))
    cost = CONNECTORS.get(connector, Connector) if isinstance(connector, str) else Connector
    return {"connector": connector, "visual_tokens": cost.visual_tokens(cfg, t_v), "kv_cache_bytes": cost.kv_cache_bytes(cfg, t_v),
            "kv_dtype": KV_DTYPE, "train_seconds": train_seconds(folder, extra) if folder else None}
