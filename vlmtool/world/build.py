"""make_world: the shapes world's shards, videos and world.json (settings, counts, object tables)."""

from __future__ import annotations

import math
from pathlib import Path

import orjson

from vlmtool.world.folder import claim_folder, release_folder
from vlmtool.world.scenes import DEFAULT_KIND, world_kind
from vlmtool.world.shapes import BROKEN_KINDS, SIZE_MIXES, make_sample, make_video


def _cut_inside_a_member(path: Path, at: float = 0.6) -> dict:
    """Truncate a tar inside the data of a member (never at a member boundary, where the shorter
    tar would still be whole): the member whose data covers `at` of the file, or the next one."""
    import tarfile

    from vlmtool.core.records import split_member_name

    data = path.read_bytes()
    with tarfile.open(path) as tf:
        members = [(m.name, m.offset_data, m.size) for m in tf if m.isreg() and m.size >= 2]
    target = int(len(data) * at)
    name, start, size = next((m for m in members if m[1] + m[2] > target), members[-1])
    cut = min(max(target, start + 1), start + size - 1)
    path.write_bytes(data[:cut])
    return {"shard": path.name, "kept_bytes": cut, "of_bytes": len(data), "member": name, "key": split_member_name(name)[0]}


def object_tables(objects: list[list[str]]) -> dict:
    """world.json's object tables, the way a dataset would describe itself: the labels its samples
    name (`vocabulary`), in how many samples each appears (`popularity`) and in how many each pair
    appears together (`cooccurrence`, symmetric: cooccurrence[a][b] == cooccurrence[b][a])."""
    import itertools
    from collections import Counter

    pop: Counter = Counter()
    pairs: Counter = Counter()
    for labels in objects:
        names = sorted(set(labels))
        pop.update(names)
        pairs.update(itertools.combinations(names, 2))
    co: dict[str, dict[str, int]] = {}
    for (a, b), n in pairs.items():
        co.setdefault(a, {})[b] = n
        co.setdefault(b, {})[a] = n
    return {"field": "objects", "label": "shape", "samples": len(objects), "vocabulary": sorted(pop),
            "popularity": dict(sorted(pop.items())), "cooccurrence": {a: dict(sorted(co[a].items())) for a in sorted(co)}}


def _write_shards(out: Path, n_shards: int, samples: int, shard_size: int, seed: int, progress: bool, **opts) -> list[list[dict]]:
    """Write the shards; returns, per shard, each sample's key, broken kind (or None) and labels."""
    from tqdm import tqdm

    from vlmtool.core.shards import ShardTarWriter

    written: list[list[dict]] = []
    bar = tqdm(total=samples, desc="world", unit="sample", disable=not progress)
    for s in range(n_shards):
        writer = ShardTarWriter(out / f"{s:05d}.tar")
        rows = []
        for i in range(s * shard_size, min(samples, (s + 1) * shard_size)):
            rec = make_sample(seed, i, **opts)
            meta = orjson.loads(rec["json"])
            rows.append({"key": rec["__key__"], "broken": meta.get("broken"), "mismatched": meta["mismatched"],
                         "labels": [o["shape"] for o in meta["objects"]]})
            writer.write(rec)
            bar.update()
        writer.commit()
        written.append(rows)
    bar.close()
    return written


def _write_videos(out: Path, videos: int, seed: int, kind: str) -> dict:
    """OUT/videos/NNNNN.mp4 and each one's truth beside it (.json); returns the truths by name."""
    from vlmtool.core.shards import write_json

    truth = {}
    for v in range(videos):
        p = out / "videos" / f"{v:05d}.mp4"
        truth[p.name] = make_video(p, seed, v, kind=kind)
        write_json(p.with_suffix(".json"), truth[p.name])
    return truth


def make_world(
    out: str | Path,
    samples: int = 64,
    shard_size: int = 16,
    seed: int = 0,
    mismatch: float = 0.0,
    broken: float = 0.0,
    broken_tar: bool = False,
    videos: int = 0,
    sizes: str = "varied",
    plain: float = 0.0,
    kind: str = DEFAULT_KIND,
    progress: bool = False,
) -> dict:
    """Write `samples` records as shards OUT/{00000..}.tar (+ videos) and OUT/world.json.

    OUT must be new, empty or an earlier world's folder (whose files are replaced). world.json
    keeps the settings, `files` (everything the world wrote), `counts` (mismatched captions and
    broken samples by kind, over the records in the shards), `truncated_shard` (with
    --broken-tar: the shard, the member cut and its record's `key`, the one `broken_tar` record,
    and `lost`, the records cut off after it) and `objects`, the tables of object_tables over
    the samples a reader gets whole (not broken, not cut off)."""
    from vlmtool.core.shards import write_json
    from vlmtool.errors import UsageError

    spec = world_kind(kind)
    if sizes not in SIZE_MIXES:
        raise UsageError(f"unknown size mix {sizes!r}: use one of {', '.join(SIZE_MIXES)}")
    if samples < 1 or shard_size < 1:
        raise UsageError("--samples and --shard-size must be at least 1")
    if not (0 <= mismatch <= 1 and 0 <= broken <= 1 and 0 <= plain <= 1):
        raise UsageError("--mismatch, --broken and --plain are fractions between 0 and 1")
    n_shards = math.ceil(samples / shard_size)
    files = [f"{s:05d}.tar" for s in range(n_shards)]
    files += [f"videos/{v:05d}{ext}" for v in range(videos) for ext in (".mp4", ".json")] + ["world.json"]
    out = claim_folder(out, files)
    written = _write_shards(out, n_shards, samples, shard_size, seed, progress, mismatch=mismatch, broken=broken, sizes=sizes,
                            plain=plain, kind=kind)
    truncated = None
    if broken_tar:
        truncated = _cut_inside_a_member(out / files[n_shards - 1])
        last = written[-1]
        cut_at = next(i for i, r in enumerate(last) if r["key"] == truncated["key"])
        truncated["lost"] = len(last) - cut_at - 1
        written[-1] = last[:cut_at]
    rows = [r for shard in written for r in shard]
    counts = {"mismatched": sum(r["mismatched"] for r in rows), "broken": {k: 0 for k in BROKEN_KINDS}}
    for r in rows:
        if r["broken"]:
            counts["broken"][r["broken"]] += 1
    video_truth = _write_videos(out, videos, seed, kind)
    summary = {"out": str(out), "seed": seed, "kind": kind, "categories": list(spec.categories), "samples": samples, "shards": n_shards, "shard_size": shard_size,
               "sizes": sizes, "mismatch": mismatch, "broken": broken, "plain": plain, "counts": counts,
               "truncated_shard": truncated, "videos": sorted(video_truth), "files": files,
               "objects": object_tables([r["labels"] for r in rows if not r["broken"]])}
    write_json(out / "world.json", summary)
    release_folder(out)
    return summary
