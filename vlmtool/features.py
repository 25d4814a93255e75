"""Feature shards: what `vlmtool encode` writes and `vlmtool train` (or anyone's trainer) reads.

Format (docs/formats.md, "Feature shards", version FORMAT_VERSION):
- `DIR/features.json`: the tower that made them, exactly (architecture, weights path and
  sha256, layer, cls, width D, image and patch size, preprocessing, dtype), so inference can
  encode a new image with the very same tower.
- `DIR/shards/NAME.tar`: one webdataset shard per input shard, keys kept, members
  `KEY.tokens.npy` (float16 [T, D]), `KEY.json` (format version, source shard and key, image
  size, view kind, the views with their rows, grids, tile boxes and frame times, token counts,
  the sample's text) and, with --pooled, `KEY.pooled.npy` (float16 [E], the normalized image
  embedding).

    for s in read(["feats/shards/00000.tar"]):
        s["key"], s["tokens"].shape, s["meta"]["views"]
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from torch.utils.data import IterableDataset

from vlmtool.errors import UsageError

FORMAT_VERSION = 1
FORMAT_NAME = "vlmtool-features"


def npy_bytes(array) -> bytes:
    """A numpy array as .npy bytes (numpy's own format; webdataset decodes it by its extension)."""
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def load_npy(data: bytes):
    import numpy as np

    return np.load(io.BytesIO(data), allow_pickle=False)


def check_version(meta: dict, where: str) -> None:
    v = meta.get("version")
    if meta.get("format") != FORMAT_NAME or v != FORMAT_VERSION:
        raise UsageError(f"{where}: feature format {meta.get('format')!r} version {v!r}; this vlmtool reads "
                         f"{FORMAT_NAME} version {FORMAT_VERSION} (re-encode with this version of `vlmtool encode`)")


def read_features_json(root: str | Path) -> dict:
    """DIR/features.json of a feature folder (checked for its version)."""
    p = Path(root) / "features.json"
    if not p.exists():
        raise UsageError(f"{root} has no features.json: is it the output folder of `vlmtool encode`?")
    meta = orjson.loads(p.read_bytes())
    check_version(meta, str(p))
    return meta


def feature_shards(inputs: list[str]) -> list[str]:
    """Feature shard paths from folders written by encode (their shards/), shard files, patterns."""
    from vlmtool.core.shards import expand_inputs

    specs = []
    for spec in inputs:
        p = Path(spec)
        if p.is_dir() and (p / "features.json").exists():
            read_features_json(p)
            specs.append(str(p / "shards"))
        else:
            specs.append(spec)
    return expand_inputs(specs)


MAX_ROWS = 1 << 16  # rows one sample may hold (64 views of 32x32 patches); a header saying more is refused


def _sample(rec: dict, where: str, width: int | None = None) -> dict:
    """One feature record -> its sample, or SampleError(missing_image|bad_json|bad_features|
    non_finite) naming what is wrong: the tokens a 2-D float array [T, D] with D the tower's
    width (when known) and at least the rows its views name, all finite; the json an object of
    this format version."""
    from vlmtool.core.samples import SampleError

    if "tokens.npy" not in rec or "json" not in rec:
        raise SampleError("missing_image", "no tokens.npy/json member")
    try:
        meta = orjson.loads(rec["json"])
    except orjson.JSONDecodeError as e:
        raise SampleError("bad_json", str(e)) from None
    if not isinstance(meta, dict):
        raise SampleError("bad_json", f"a {type(meta).__name__}, not an object")
    check_version(meta, f"{where} {rec['__key__']}")
    tokens = check_tokens(rec["tokens.npy"], width, _rows_named(meta))
    out = {"key": rec["__key__"], "tokens": tokens, "meta": meta}
    if "pooled.npy" in rec:
        out["pooled"] = load_npy(rec["pooled.npy"])
    return out


def _rows_named(meta: dict) -> int:
    """The rows the sample's views say it has (the end of the last view)."""
    from vlmtool.core.samples import SampleError

    views = meta.get("views")
    try:
        return max(int(v["rows"][1]) for v in views) if views else 0
    except (TypeError, KeyError, IndexError, ValueError):
        raise SampleError("bad_metadata", "views is not a list of {kind, rows: [start, end]}") from None


def check_tokens(data: bytes, width: int | None, rows: int):
    """.npy bytes -> the [T, D] float array, or SampleError(bad_features|non_finite)."""
    import numpy as np

    from vlmtool.core.samples import SampleError

    try:
        a = load_npy(data)
    except Exception as e:  # empty, truncated, pickled, not .npy at all
        raise SampleError("bad_features", f"tokens.npy cannot be read ({type(e).__name__}: {str(e)[:120]})") from None
    if a.ndim != 2 or a.dtype.kind != "f":
        raise SampleError("bad_features", f"tokens.npy is {a.dtype} {list(a.shape)}, not a float [T, D] array")
    if width is not None and a.shape[1] != width:
        raise SampleError("bad_features", f"tokens.npy has width {a.shape[1]}, the tower's is {width}")
    if not 0 < a.shape[0] <= MAX_ROWS or a.shape[0] < rows:
        raise SampleError("bad_features", f"tokens.npy has {a.shape[0]} rows, its views name {rows} (at most {MAX_ROWS})")
    if not np.isfinite(a).all():
        raise SampleError("non_finite", f"tokens.npy holds {int((~np.isfinite(a)).sum())} NaN or infinite values")
    return a


def read(paths: list[str], rejects: list | None = None, width: int | None = None) -> Iterator[dict]:
    """One dict per sample of the feature shards, in order: `key`, `tokens` (float [T, D]),
    `meta` (the sample's json) and, when written, `pooled`. A broken record or a spoiled sample
    (`_sample`'s checks; `width`: the width every sample must have) is skipped and, when a
    `rejects` list is given, appended to it."""
    from vlmtool.core.records import ReadOptions, Reject, tar_records
    from vlmtool.core.samples import SampleError
    from vlmtool.core.shards import shard_refs

    read_opts = ReadOptions(max_member_bytes=1 << 31)
    for ref in shard_refs(list(paths)):
        for rec in tar_records(ref, read_opts):
            if isinstance(rec, Reject):
                if rejects is not None:
                    rejects.append(rec)
                continue
            try:
                s = _sample(rec, ref.url, width)
            except SampleError as e:
                if rejects is not None:
                    rejects.append(Reject(ref.name, rec["__key__"], e.reason, e.detail))
                continue
            s["shard"] = ref.name
            yield s


class FeatureDataset(IterableDataset):
    """A DataLoader-ready iterable over feature shards: shard i goes to rank i % world, then to
    worker j % workers within the rank; a shard is never split, so samples keep shard order."""

    def __init__(self, paths: list[str], rank: int = 0, world_size: int = 1):
        self.paths, self.rank, self.world_size = list(paths), rank, world_size

    def __iter__(self) -> Iterator[dict]:
        from vlmtool.core.runtime import worker_share

        yield from read(worker_share(self.paths[self.rank :: self.world_size]))

    @property
    def num_shards(self) -> int:
        """This rank's shards (the sample count is not known before reading)."""
        return len(self.paths[self.rank :: self.world_size])


def lm_layout(meta: dict) -> tuple[list[int], list[int]]:
    """Which token rows the language model sees, in order (`tokens[rows]` are its visual slots),
    and the slot positions (indices into `rows`) after which a row-newline slot goes: what
    `ChatTokenizer.encode_chat(n_visual=len(rows), newline_after=...)` takes.
    `len(rows) + len(newline_after)` equals budget's token count for the sample.

    - LLaVA-NeXT AnyRes: the base view's rows, then the tiles' rows arranged into the merged
      feature grid (rows*g x cols*g), cropped to the unpadded region, a newline after each row;
    - anything else: every row, in order (views one after the other), no newlines."""
    layout = meta.get("layout", {"kind": "all"})
    views = meta["views"]
    if layout.get("kind") != "anyres":
        return [r for v in views for r in range(*v["rows"])], []
    base = next(v for v in views if v["kind"] == "base")
    g = base["grid"][0]
    start = {tuple(v["cell"]): v["rows"][0] for v in views if v["kind"] == "tile"}
    off_h, off_w, cur_h, cur_w = layout["crop"]
    rows, newline_after = list(range(*base["rows"])), []
    for y in range(off_h, off_h + cur_h):
        for x in range(off_w, off_w + cur_w):
            rows.append(start[(y // g, x // g)] + (y % g) * g + (x % g))
        newline_after.append(len(rows) - 1)
    return rows, newline_after


def collate(samples: list[dict]) -> dict[str, Any]:
    """Pad variable token counts: `tokens` float32 [B, T_max, D], `mask` bool [B, T_max] (True
    on real rows), `keys`, `meta`."""
    import numpy as np
    import torch

    t_max = max(s["tokens"].shape[0] for s in samples)
    d = samples[0]["tokens"].shape[1]
    out = np.zeros((len(samples), t_max, d), dtype=np.float32)
    mask = np.zeros((len(samples), t_max), dtype=bool)
    for i, s in enumerate(samples):
        if s["tokens"].shape[1] != d:
            raise UsageError(f"sample {s['key']} has feature width {s['tokens'].shape[1]}, others {d}: mixed towers in one batch")
        n = s["tokens"].shape[0]
        out[i, :n] = s["tokens"]
        mask[i, :n] = True
    return {"tokens": torch.from_numpy(out), "mask": torch.from_numpy(mask), "keys": [s["key"] for s in samples],
            "meta": [s["meta"] for s in samples]}
