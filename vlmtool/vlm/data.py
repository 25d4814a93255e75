"""What `vlmtool train` reads: feature shards (or image shards for the native connector and for
stage 0), synth's instruction rows joined to them by (shard stem, key), and the items one stage
trains on.

An item is a plain dict (cheap to pickle out of loader workers): `ids` and `labels` (one
`ChatEncoding`, labels -100 outside assistant replies), `visual` (float16 [T_v, D], the rows the
LM sees, or None), `pixels` (uint8 [3, S, S] for the native connector, or None), both arrays
`pack`ed as bytes. `collate_items` pads a batch.

    src = open_inputs(inputs, native=False)        # shards, kind, tower reference, width D
    entries = scan(src)                             # (shard, key, stem, caption) of every sample
    rows = Instructions.load(path)                  # synth rows by (stem, key)
    prep = Prep(stage, tok, slots=..., rows=rows, text_mix=0.1, seed=0, skip=val_keys)
    TrainStream(refs, None, seed, rank, world, read_shard=lambda ref: prep.read(src, ref))
"""

from __future__ import annotations

import random
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from vlmtool.errors import UsageError

CAPTION_PROMPT = "Describe the image briefly."  # stage 1: a fixed instruction -> the caption (LLaVA's brief-caption prompt)
_SUFFIXES = (".tar.gz", ".tgz", ".tar")


MAX_ROW_BYTES = 1 << 20  # one instruction row (a JSONL line); longer lines are counted and skipped unread


def shard_stem(name: str) -> str:
    """`/a/b/00001.tar`, `https://host/b/00001.tar?sig=...` or `pipe:aws s3 cp s3://b/00001.tar -`
    -> `00001`: the join key's shard part. The whole file name, spaces and all: only a `pipe:`
    command is split into words."""
    name = str(name)
    if name.startswith("pipe:"):
        return _stem_of_pipe(name)
    base = name.rstrip("/").split("/")[-1]
    if "://" in name:
        base = base.split("?")[0].split("#")[0]
    for s in _SUFFIXES:
        if base.endswith(s):
            return base[: -len(s)]
    return base


def _stem_of_pipe(name: str) -> str:
    parts = [p for p in name[len("pipe:"):].split() if p.endswith(_SUFFIXES)]
    return shard_stem(parts[-1]) if parts else name


def capped_lines(f, cap: int = MAX_ROW_BYTES) -> Iterator[bytes | None]:
    """The lines of a binary file, each read with at most `cap` bytes in memory: a longer line is
    drained in chunks and given as None (the caller counts it)."""
    while True:
        line = f.readline(cap + 1)
        if not line:
            return
        if len(line) > cap and not line.endswith(b"\n"):
            while True:
                more = f.readline(1 << 20)
                if not more or more.endswith(b"\n"):
                    break
            yield None
            continue
        yield line


# ---------------------------------------------------------------------------------- inputs


@dataclass
class Inputs:
    shards: list[str]
    kind: str  # "features" or "images"
    tower: dict | None = None  # features.json's tower reference (None: none found, or image shards)
    width: int | None = None  # the feature width D


def _has_features(path: str) -> bool:
    try:
        with tarfile.open(path) as tf:
            for m in tf:
                if m.name.endswith(".tokens.npy"):
                    return True
                if m.name.endswith((".jpg", ".jpeg", ".png", ".webp", ".txt")):
                    return False
    except (OSError, tarfile.TarError):
        return False
    return False


def _features_json(shard: str) -> Path | None:
    for d in (Path(shard).parent.parent, Path(shard).parent):
        if (d / "features.json").is_file():
            return d / "features.json"
    return None


def open_inputs(inputs: list[str], images: bool = False) -> Inputs:
    """The training shards, their kind, and (feature shards) the tower reference and width D.
    Feature folders of different widths, or a feature shard whose vectors do not have the width
    its features.json states, raise `UsageError`."""
    from vlmtool import features
    from vlmtool.core.shards import expand_inputs

    shards = features.feature_shards(inputs) if not images else expand_inputs(inputs)
    if not shards:
        raise UsageError("no input shards found: give feature folders (vlmtool encode), shard files or patterns")
    if images or not _has_features(shards[0]):
        if not images and any(Path(s).is_dir() and (Path(s) / "features.json").exists() for s in inputs):
            raise UsageError(f"{shards[0]} holds no feature vectors (KEY.tokens.npy)")
        return Inputs(shards, "images")
    towers = {}
    for s in shards:
        fj = _features_json(s)
        if fj is not None and fj not in towers:
            towers[fj] = tower_reference(features.read_features_json(fj.parent))
    widths = {str(p.parent): t.get("width") for p, t in towers.items()}
    if len(set(widths.values())) > 1:
        raise UsageError(f"feature folders of different widths in one run: {widths}; train on one tower's features")
    tower = next(iter(towers.values()), None)
    width = tower.get("width") if tower else None
    for s in shards:
        w = first_width(s)
        if width is None:
            width = w
        elif w is not None and w != width:
            raise UsageError(f"feature shard {s} has vectors of width {w}, not {width} like the others "
                             f"(its features.json or the first shard): mixed towers")
    return Inputs(shards, "features", tower, width)


def tower_reference(features_json: dict) -> dict:
    """What a checkpoint records of the features it was trained on: features.json's tower, and
    under `views` the view layout encode cut (AnyRes preset and its options, frames a video), so
    that infer and eval rebuild exactly that layout for a new image."""
    tower = dict(features_json.get("tower") or {})
    tower["views"] = {"anyres": features_json.get("anyres"), "anyres_options": features_json.get("anyres_options"),
                      "frames_per_video": features_json.get("frames_per_video"), "frame_budget": features_json.get("frame_budget")}
    return tower


def first_width(shard: str) -> int | None:
    """The width D of the first feature vectors in a shard (None: no readable sample)."""
    from vlmtool import features

    for s in features.read([shard]):
        return int(s["tokens"].shape[1])
    return None


@dataclass(frozen=True)
class Entry:
    shard: str  # the training shard's path
    key: str
    stem: str  # the source shard's stem (what synth's rows name)
    caption: str | None


def scan(src: Inputs) -> list[Entry]:
    """Every sample's (shard, key, source stem, caption), in input order, without reading the
    feature vectors or decoding images: the join, the tokenizer's text and the validation slice
    are planned from it."""
    out: list[Entry] = []
    for shard in src.shards:
        out.extend(_scan_features(shard) if src.kind == "features" else _scan_images(shard))
    return out


def _scan_features(shard: str) -> Iterator[Entry]:
    try:
        with tarfile.open(shard) as tf:
            for m in tf:
                if not m.name.endswith(".json") or not m.isfile() or m.size > 1 << 24:
                    continue
                try:
                    meta = orjson.loads(tf.extractfile(m).read())
                except orjson.JSONDecodeError:
                    continue
                key = m.name[: -len(".json")]
                yield Entry(shard, key, _source_stem(meta, shard), _caption(meta))
    except (OSError, tarfile.TarError):
        return  # a broken shard: the stream counts its rejects


def _scan_images(shard: str) -> Iterator[Entry]:
    from vlmtool.core.records import Reject, iter_samples
    from vlmtool.core.shards import shard_refs

    for s in iter_samples(shard_refs([shard])[0]):
        if not isinstance(s, Reject):
            yield Entry(shard, s.key, shard_stem(shard), s.caption)


def _source_stem(meta: dict, shard: str) -> str:
    src = meta.get("source") if isinstance(meta, dict) else None
    name = src.get("shard") if isinstance(src, dict) else None
    return shard_stem(name) if isinstance(name, str) and name else shard_stem(shard)


def _caption(meta: dict) -> str | None:
    text = meta.get("text") if isinstance(meta, dict) else None
    cap = text.get("caption") if isinstance(text, dict) else None
    return cap if isinstance(cap, str) and cap.strip() else None


# ---------------------------------------------------------------------------------- instructions


@dataclass
class Instructions:
    """synth's rows by (shard stem, key), parsed into turns; malformed rows counted."""

    rows: dict[tuple[str, str], list] = field(default_factory=dict)
    total: int = 0
    malformed: int = 0
    reasons: dict = field(default_factory=dict)  # malformed rows by what was wrong

    @classmethod
    def load(cls, path: str | None) -> Instructions:
        out = cls()
        if path is None:
            return out
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"--instructions {path}: no such file")
        with open(p, "rb") as f:
            for line in capped_lines(f):
                if line is not None and not line.strip():
                    continue
                out.total += 1
                try:
                    where, turns = instruction_row(line)
                except UsageError as e:
                    out.malformed += 1
                    why = str(e).split(":")[0]
                    out.reasons[why] = out.reasons.get(why, 0) + 1
                    continue
                out.rows.setdefault(where, []).append(turns)
        return out

    def texts(self) -> Iterator[str]:
        for convs in self.rows.values():
            for turns in convs:
                yield flat_text(turns)

    def joined(self, entries: list[Entry]) -> int:
        have = {(e.stem, e.key) for e in entries}
        return sum(len(v) for k, v in self.rows.items() if k in have)


def instruction_row(line: bytes | None) -> tuple[tuple[str, str], list]:
    """One instruction line -> ((shard stem, key), turns), or UsageError("REASON: ...") naming
    what is wrong: over-long, not JSON, no shard (`shard`, or the folder of `image`
    "SHARD/KEY.jpg"), no string key, turns that are not user/assistant pairs, or an `<image>`
    anywhere but once in the first user turn (none is allowed: the slots go first)."""
    from vlmtool.vlm.tokenizer import IMAGE, turns_from_record

    if line is None:
        raise UsageError(f"too_long: a row of more than {MAX_ROW_BYTES} bytes")
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise UsageError("bad_json: not a JSON line") from None
    if not isinstance(row, dict):
        raise UsageError(f"bad_row: a {type(row).__name__}, not an object")
    key, shard, image = row.get("key"), row.get("shard"), row.get("image")
    if not isinstance(shard, str) or not shard:
        shard = image.rsplit("/", 1)[0] if isinstance(image, str) and "/" in image else None
    if not isinstance(shard, str) or not shard or not isinstance(key, str) or not key:
        raise UsageError("bad_row: no shard and key (fields `shard` and `key`, or `image` as SHARD/KEY.jpg)")
    try:
        turns = turns_from_record(row)
    except UsageError as e:
        raise UsageError(f"bad_row: {e}") from None
    users = [u.count(IMAGE) for u, _ in turns]
    if sum(users) > 1 or any(users[1:]) or any(IMAGE in a for _, a in turns):
        raise UsageError(f"bad_row: {sum(users)} {IMAGE} markers; one image, in the first user turn")
    return (shard_stem(shard), key), turns


def flat_text(turns) -> str:
    """A conversation as plain text (stage 0 and text-only samples): the turns, `<image>` dropped."""
    return "\n".join(t.replace("<image>\n", "").replace("<image>", "").strip() for pair in turns for t in pair if t)


# ---------------------------------------------------------------------------------- items


@dataclass
class Prep:
    """Turns samples into a stage's items. `skip`: (stem, key) pairs held out for validation."""

    stage: int
    tok: object
    slots: bool = True  # the connector takes visual slots (mlp, native) rather than cross-attention
    native: tuple[int, int] | None = None  # (image_size, patch_size) for the native connector
    rows: dict = field(default_factory=dict)
    text_mix: float = 0.0
    seed: int = 0
    skip: frozenset = frozenset()
    max_len: int = 0  # items longer than the LM's context are counted and skipped (cutting would split the image)
    width: int | None = None  # the feature width every sample must have (the connector's input)

    def read(self, src: Inputs, ref) -> Iterator:
        """A TrainStream `read_shard`: this shard's items, rejects passed through."""
        from vlmtool.core.records import Reject

        rng = random.Random(f"{self.seed}:{ref.name}")  # text-mix draws: a pure function of seed and shard
        for s in self.samples(src, ref):
            if not isinstance(s, dict):
                yield s
                continue
            if (s["stem"], s["key"]) in self.skip:
                continue
            for item in self.items(s, rng):
                if self.max_len and len(item["ids"]) > self.max_len:
                    yield Reject(ref.name, s["key"], "too_long", f"{len(item['ids'])} tokens, the LM takes {self.max_len}")
                else:
                    yield {**item, "key": f"{ref.name}/{s['key']}"}

    def samples(self, src: Inputs, ref) -> Iterator:
        """The shard's samples (dicts) and rejects, checked for this run's feature width."""
        size = self.native[0] if self.native is not None and self.stage > 0 else 0
        return _feature_samples(ref, self.width) if src.kind == "features" else _image_samples(ref, size)

    def items(self, s: dict, rng: random.Random | None = None) -> Iterator[dict]:
        if self.stage == 0:
            if s["caption"]:
                yield text_item(self.tok, s["caption"])
            for turns in self.rows.get((s["stem"], s["key"]), ()):
                yield text_item(self.tok, flat_text(turns))
            return
        convs = [[(CAPTION_PROMPT, s["caption"])]] if self.stage == 1 and s["caption"] else []
        if self.stage == 2:
            convs = self.rows.get((s["stem"], s["key"]), [])
        for turns in convs:
            yield self.visual_item(s, turns)
            if self.stage == 2 and s["caption"] and rng is not None:
                for _ in range(_draws(self.text_mix, rng)):
                    yield text_item(self.tok, s["caption"])

    def visual_item(self, s: dict, turns) -> dict:
        if self.native is not None:
            from vlmtool.vlm.connectors import grid_of
            from vlmtool.vlm.tokenizer import grid_newlines

            rows, cols = grid_of(self.native[0], self.native[0], self.native[1])
            enc = self.tok.encode_chat(turns, n_visual=rows * cols, newline_after=grid_newlines(rows, cols))
            return {"ids": enc.input_ids, "labels": enc.labels, "visual": None, "pixels": pack(s["pixels"])}
        rows, newline_after = lm_layout(s["meta"], s["tokens"].shape[0])
        enc = self.tok.encode_chat(turns, n_visual=len(rows) if self.slots else 0, newline_after=newline_after if self.slots else ())
        return {"ids": enc.input_ids, "labels": enc.labels, "visual": pack(s["tokens"][rows]), "pixels": None}  # [T_v, D]


def pack(array) -> tuple[bytes, tuple, str]:
    """An array as (bytes, shape, dtype): loader workers hand items over by pickling, and a numpy
    array would be turned into a torch tensor in shared memory per item (DataLoader's
    default_convert), which cost a quarter of the training rate here (bench/train.py)."""
    return array.tobytes(), tuple(array.shape), str(array.dtype)


def unpack(packed):
    """pack's inverse (None stays None)."""
    import numpy as np

    if packed is None:
        return None
    data, shape, dtype = packed
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _draws(rate: float, rng: random.Random) -> int:
    """How many text-only items follow one multimodal item so that they make `rate` of all items."""
    if rate <= 0:
        return 0
    per = rate / (1 - rate) if rate < 1 else 1e9
    return int(per) + (rng.random() < per - int(per))


def text_item(tok, text: str) -> dict:
    enc = tok.encode_text(text)
    return {"ids": enc.input_ids, "labels": enc.labels, "visual": None, "pixels": None}


def lm_layout(meta: dict, n_rows: int) -> tuple[list[int], list[int]]:
    """The feature rows the LM sees, in order, and after which a row-newline slot goes: encode's
    `features.lm_layout` when it exists, else every row in order without newlines."""
    from vlmtool import features

    fn = getattr(features, "lm_layout", None)
    if fn is None:
        return list(range(n_rows)), []
    rows, newline_after = fn(meta)
    return list(rows), list(newline_after)


def _feature_samples(ref, width: int | None = None) -> Iterator:
    from vlmtool import features
    from vlmtool.core.records import Reject

    rejects: list = []
    for s in features.read([ref.url], rejects, width):
        while rejects:
            yield rejects.pop(0)
        yield {"key": s["key"], "stem": _source_stem(s["meta"], ref.url), "caption": _caption(s["meta"]),
               "tokens": s["tokens"], "meta": s["meta"]}
    yield from (r for r in rejects if isinstance(r, Reject))


def _image_samples(ref, size: int = 0) -> Iterator:
    """Image shards' samples; with `size`, the image decoded to uint8 pixels [3, size, size]."""
    from vlmtool.core.records import Reject, iter_samples
    from vlmtool.core.samples import SampleError

    for s in iter_samples(ref):
        if isinstance(s, Reject):
            yield s
            continue
        try:
            pixels = pixels_of(s.load_image(), size) if size else None
        except SampleError as e:
            yield Reject(ref.name, s.key, e.reason, e.detail)
            continue
        yield {"key": s.key, "stem": shard_stem(ref.url), "caption": s.caption, "pixels": pixels}


def pixels_of(image, size: int):
    """A PIL image -> uint8 [3, size, size] (RGB, bicubic resize to a square): the native input."""
    import numpy as np
    from PIL import Image

    img = image.convert("RGB").resize((size, size), Image.BICUBIC)
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))  # [3, S, S]


# ---------------------------------------------------------------------------------- batches


def collate_items(items: list[dict], pad_id: int, max_len: int | None = None, pack: int = 0) -> dict:
    """A batch of items -> model inputs: input_ids and targets [B, T] (right padded; targets are
    the labels shifted by one, `model.shift_labels`, so the loss reads the logits without a copy;
    causal attention keeps real tokens from the padding after them, so no attention mask), and
    visual [B, T_v, D] + visual_mask [B, T_v] (text-only rows: all False) or pixels [B, 3, S, S]
    + visual_mask [B] (the rows with an image); left out when no row has any.

    pack > 0: the items go into rows of up to `pack` tokens (`pack_rows`), each item's labels
    shifted on its own, with segment_ids [R, T] (1, 2, ... per item, 0 padding) so that the
    model restarts positions and masks attention per item; a row's visual rows are its items'
    in order. The same items give the same loss packed or not."""
    import torch

    from vlmtool.vlm.model import shift_labels
    from vlmtool.vlm.tokenizer import ChatEncoding, collate

    if pack:
        return _collate_packed(items, pad_id, max_len, pack)
    batch = collate([ChatEncoding(it["ids"], it["labels"]) for it in items], pad_id, "right", max_len)
    out = {"input_ids": batch["input_ids"], "targets": shift_labels(batch["labels"])}
    out.update(_visual_batch([[it["visual"]] for it in items]))
    pix = [unpack(it["pixels"]) for it in items]
    if any(p is not None for p in pix):
        import numpy as np

        shape = next(p for p in pix if p is not None).shape
        out["pixels"] = torch.from_numpy(np.stack([p if p is not None else np.zeros(shape, np.uint8) for p in pix]))  # [B, 3, S, S]
        out["visual_mask"] = torch.tensor([p is not None for p in pix])  # [B]: the rows that have an image
    return out


def _visual_batch(rows: list[list]) -> dict:
    """Per batch row, the packed visual arrays of its items (None: none) -> visual [B, T_v, D]
    (each row's arrays one after the other) and visual_mask [B, T_v]; {} when there are none."""
    import numpy as np
    import torch

    vis = [[v for v in map(unpack, row) if v is not None] for row in rows]
    if not any(vis):
        return {}
    d = next(v for row in vis for v in row).shape[1]
    lengths = [sum(v.shape[0] for v in row) for row in vis]
    arr = np.zeros((len(rows), max(lengths), d), dtype=np.float32)  # [B, T_v, D]
    mask = np.zeros((len(rows), max(lengths)), dtype=bool)  # [B, T_v]
    for i, row in enumerate(vis):
        if row:
            arr[i, : lengths[i]] = np.concatenate(row)
            mask[i, : lengths[i]] = True
    return {"visual": torch.from_numpy(arr), "visual_mask": torch.from_numpy(mask)}


def pack_rows(lengths: list[int], cap: int) -> list[list[int]]:
    """Item indices per row, each row's lengths summing to at most `cap`, or to the longest item
    when that is longer (the batch is padded to it anyway, so every row may fill to it: on synth's
    stage-2 data a fifth of the items exceed 128 tokens, and a 128 cap then left 42% of the slots
    padding): first-fit decreasing, ties in item order. A pure function of the lengths, so the
    rows of a batch are the same on every run and every resume."""
    cap = max([cap, *lengths])
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        at = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if at is None:
            rows.append([i])
            room.append(cap - lengths[i])
        else:
            rows[at].append(i)
            room[at] -= lengths[i]
    return [sorted(r) for r in rows]


def _collate_packed(items: list[dict], pad_id: int, max_len: int | None, cap: int) -> dict:
    import torch

    from vlmtool.vlm.tokenizer import IGNORE

    if any(it["pixels"] is not None for it in items):
        raise UsageError("packing takes feature (or text) items, not pixels: leave out --pack with the native connector")
    rows = pack_rows([len(it["ids"]) for it in items], cap)
    T = max(sum(len(items[i]["ids"]) for i in row) for row in rows)
    if max_len is not None and T > max_len:
        raise UsageError(f"a sample has {T} tokens, more than the model's {max_len}")
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    seg = torch.zeros((len(rows), T), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for s, i in enumerate(row, start=1):
            n = len(items[i]["ids"])
            ids[r, at : at + n] = torch.tensor(items[i]["ids"])
            targets[r, at : at + n - 1] = torch.tensor(items[i]["labels"][1:])  # this item's own shift
            seg[r, at : at + n] = s
            at += n
    out = {"input_ids": ids, "targets": targets, "segment_ids": seg}
    out.update(_visual_batch([[items[i]["visual"] for i in row] for row in rows]))
    return out
