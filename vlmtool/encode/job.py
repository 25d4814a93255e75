"""`vlmtool encode`: projector-ready feature shards (docs/formats.md, "Feature shards").

Loader workers read records, cut each sample's views (the whole image, AnyRes tiles, video
frames) and preprocess them with the tower's own transform (stream.py). The main process runs
the tower on full batches of views, packed per shard (a shard's device batches are the same
whatever the workers or the resume, so a rerun writes the same bytes), and writes one output
shard per input shard: `KEY.tokens.npy`, `KEY.json`, optionally `KEY.pooled.npy`.
Resume, ranks, manifest and rejects as every job: core/job.py's Job and per-shard records.
"""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from pathlib import Path

from vlmtool.core.batches import Batch, RunStats, run_shards
from vlmtool.core.executors import record_stats, run_records, shard_records, uses_ray
from vlmtool.core.job import Job, log
from vlmtool.core.records import Reject
from vlmtool.core.shards import (
    JobDir,
    ShardRef,
    ShardTarWriter,
    dumps,
    expand_inputs,
    shard_refs,
    write_json,
)
from vlmtool.encode.options import EncodeOptions
from vlmtool.encode.records import INPUT_SUFFIXES
from vlmtool.encode.views import Tower, check_anyres
from vlmtool.features import FORMAT_NAME, FORMAT_VERSION, lm_layout, npy_bytes


def tower_of(loaded, opts: EncodeOptions) -> tuple[Tower, int]:
    """The views' geometry (a token's stride in pixels stands for the patch size) and the width
    of the chosen block."""
    from vlmtool.clip.model import token_grid

    stride, dim = token_grid(loaded, opts.layer, opts.cls)
    return Tower(loaded.preprocess.size, stride, opts.cls, opts.anyres, opts.frame_budget, opts.select, opts.sample_fps), dim


def _encoder(loaded, opts: EncodeOptions, dev, dtype):
    """forward(pixels [N, 3, S, S]) -> (tokens float32 [N, R, D], pooled float32 [N, E] or None):
    the chosen block's token grid (clip.model.grid_tokens: a ViT's patch tokens, CLS first with
    --cls, or a ResNet stage's feature map) and, with --pooled, the normalized image embedding of
    the same forward."""
    import torch

    from vlmtool.clip.model import grid_tokens
    from vlmtool.core.runtime import autocast

    visual = loaded.model.visual

    def forward(px):
        with torch.inference_mode(), autocast(dev, dtype):
            tok, emb = grid_tokens(visual, px.to(dev, non_blocking=True), opts.layer, opts.cls, opts.pooled)
            pooled = None if emb is None else torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy()  # [N, E]
            return tok.float().cpu().numpy(), pooled

    return forward


class FeatureSink:
    """One output shard: samples in tar order, each its tokens, its json and its pooled vector;
    a sample whose features are not finite becomes a reject. Counts every outcome itself."""

    def __init__(self, out: Path, ref: ShardRef, opts: EncodeOptions):
        self.ref, self.opts = ref, opts
        self.writer = ShardTarWriter(out / "shards" / f"{ref.name}.tar")
        self.ok, self.rejected, self.rows = 0, Counter(), []
        self.tokens = self.lm_tokens = self.bytes = 0

    def _reject(self, r: Reject) -> None:
        if self.opts.strict:  # the device side's rejects (run_shards stops at the loader's)
            raise r.strict_error(self.ref.url)
        self.rejected[r.reason] += 1
        self.rows.append(r.row())

    def add(self, batch: Batch, tok, pooled) -> None:
        """tok float32 [sum V, R, D] and pooled [sum V, E] | None for the batch's views, in order."""
        import numpy as np

        counts = batch.data[1] if batch.data is not None else ()
        starts = np.cumsum((0,) + tuple(counts))
        for kind, i in batch.order:
            if kind == "reject":
                self._reject(batch.rejects[i])
                continue
            a, b = int(starts[i]), int(starts[i + 1])
            t = tok[a:b].reshape(-1, tok.shape[-1]).astype(np.float16)  # [T, D]
            if not np.isfinite(t).all():
                bad = int((~np.isfinite(t).all(axis=1)).sum())
                self._reject(Reject(self.ref.name, batch.keys[i], "nonfinite_features", f"{bad} of {len(t)} rows not finite in float16"))
                continue
            p = None if pooled is None else self._pooled(batch.data[2][i], pooled[a:b])
            self._write(batch.keys[i], batch.data[2][i], t, p)

    @staticmethod
    def _pooled(meta: dict, vecs):
        """One embedding a sample: the whole-image view's (image, base, thumbnail), or the
        normalized mean over frames or tiles when there is none."""
        import numpy as np

        kinds = [v["kind"] for v in meta["views"]]
        whole = [j for j, k in enumerate(kinds) if k in ("image", "base", "thumbnail")]
        v = vecs[whole[0]] if whole else vecs.mean(0)
        return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float16)  # [E]

    def _write(self, key: str, meta: dict, t, pooled) -> None:
        meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **meta, "tokens": int(t.shape[0]), "dim": int(t.shape[1]),
                "dtype": "float16"}
        rows, newline_after = lm_layout(meta)
        meta["lm_tokens"] = len(rows) + len(newline_after)
        sample = {"__key__": key, "tokens.npy": npy_bytes(t), "json": dumps(meta)}
        if pooled is not None:
            sample["pooled.npy"] = npy_bytes(pooled)
        self.writer.write(sample)
        self.ok += 1
        self.tokens += int(t.shape[0])
        self.lm_tokens += meta["lm_tokens"]
        self.bytes += sum(len(v) for k, v in sample.items() if k != "__key__")

    def commit(self) -> dict:
        self.writer.commit()
        return {"ok": self.ok, "rejected": dict(sorted(self.rejected.items())), "rejects": self.rows, "tokens": self.tokens,
                "lm_tokens": self.lm_tokens, "bytes": self.bytes}

    def abort(self) -> None:
        self.writer.abort()


class ShardWork:
    """The buffering Sink of run_shards for one shard (compute runs here, not per loader batch):
    its views wait for the device and run in full batches of `batch_size` views as they come,
    the rest when the shard ends; results go to the FeatureSink in tar order. An out-of-memory
    error halves the batch for the rest of the shard (core/oom.py); `to_device` (--decode device)
    turns a batch's Encoded JPEGs into pixels on the device, its unreadable ones into rejects."""

    def __init__(self, sink: FeatureSink, forward, batch_size: int, to_device=None):
        from vlmtool.core.oom import Backoff

        self.sink, self.forward, self.to_device = sink, forward, to_device
        self.backoff = Backoff(batch_size, f"encode:{sink.ref.name}")
        self.batches: deque = deque()  # [batch, views, token chunks, pooled chunks, views done]
        self.px: list = []
        self.queued = 0

    def add(self, batch: Batch, results=None) -> None:
        if batch.data is not None and isinstance(batch.data[0], list):
            batch = self.to_device(batch)
        n = 0 if batch.data is None else len(batch.data[0])
        self.batches.append([batch, n, [], [], 0])
        if n:
            self.px.append(batch.data[0])
            self.queued += n
        self._run(full_only=True)

    def _run(self, full_only: bool) -> None:
        import torch

        while self.queued >= self.backoff.size or (self.queued and not full_only):
            x = torch.cat(self.px) if len(self.px) > 1 else self.px[0]  # [queued, 3, S, S]
            self.px = [x]
            take = min(self.backoff.size, self.queued)
            ok, got = self.backoff.attempt(take, lambda: self.forward(x[:take]))  # [take, R, D], [take, E]
            if not ok:
                continue  # the same views again, at half the batch
            self.px = [x[take:]] if take < len(x) else []
            self.queued -= take
            self._scatter(*got)
        while self.batches and self.batches[0][4] == self.batches[0][1]:
            self._emit(self.batches.popleft())

    def _scatter(self, tok, pooled) -> None:
        at = 0
        for entry in self.batches:
            k = min(entry[1] - entry[4], len(tok) - at)
            if k > 0:
                entry[2].append(tok[at : at + k])
                entry[3].append(None if pooled is None else pooled[at : at + k])
                entry[4] += k
                at += k
        assert at == len(tok)

    def _emit(self, entry) -> None:
        import numpy as np

        batch, n, toks, pools, _ = entry
        tok = np.concatenate(toks) if n else None  # [V, R, D]
        pooled = np.concatenate(pools) if n and pools[0] is not None else None  # [V, E]
        self.sink.add(batch, tok, pooled)

    def commit(self) -> dict:
        self._run(full_only=False)
        return {**self.sink.commit(), "oom_backoffs": self.backoff.count}

    def abort(self) -> None:
        self.sink.abort()


def device_batches(pp, dev):
    """to_device(batch) for --decode device: the batch's views decoded and preprocessed on the
    device ([V', 3, S, S]); a sample whose JPEG does not decode leaves the batch as a reject."""
    import torch

    from vlmtool.core.device_decode import drop_rejected, model_input

    def to_device(batch: Batch) -> Batch:
        items, counts, metas = batch.data
        owner = [i for i, c in enumerate(counts) for _ in range(c)]  # the sample of each view
        with torch.inference_mode():
            px, bad_views = model_input(items, pp, dev)
        bad = {owner[v]: e for v, e in bad_views.items()}  # a device-decoded sample has one view
        keep = [i for i in range(len(counts)) if i not in bad]
        return drop_rejected(batch, bad, (px, tuple(counts[i] for i in keep), tuple(metas[i] for i in keep)))

    return to_device


def _encode_shards(records: JobDir, opts: EncodeOptions, prep, forward, progress: bool, to_device=None, pin: bool = False) -> RunStats:
    """This rank's (or this actor's) unfinished shards through run_shards: the loader batches
    views (EncodePrep), ShardWork runs the tower on full batches of them."""
    return run_shards(records, prep, lambda ref: ShardWork(FeatureSink(records.out, ref, opts), forward, opts.batch_size, to_device),
                      batch_size=opts.batch_size, workers=opts.workers, strict=opts.strict, read=opts.read(), progress=progress,
                      pin_memory=pin, desc="encode")


class EncodeWorker:
    """Encode for one shard at a time, in a Ray actor (core/executors.py): the tower loaded once."""

    def __init__(self, out: str, opts: EncodeOptions):
        self.out, self.opts = out, opts

    def setup(self) -> dict:
        from vlmtool.clip.model import load_clip
        from vlmtool.core.runtime import precision_name, resolve_device, resolve_precision
        from vlmtool.encode.stream import EncodePrep

        dev = resolve_device(self.opts.device)
        dtype = resolve_precision(self.opts.precision, dev)
        loaded = load_clip(self.opts.model, self.opts.pretrained, device=dev)
        self.prep = EncodePrep(tower_of(loaded, self.opts)[0], loaded.transform, self.opts.max_pixels, self.opts.decode)
        self.forward = _encoder(loaded, self.opts, dev, dtype)
        self.to_device = device_batches(loaded.preprocess, dev) if self.opts.decode == "device" else None
        self.pin = dev.type == "cuda"
        return {"precision": precision_name(dtype)}

    def run(self, ref: ShardRef, arg=None) -> dict:
        records = shard_records(self.out, "encode", ref)
        _encode_shards(records, self.opts, self.prep, self.forward, False, self.to_device, self.pin)
        return record_stats(records, ref)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def features_json(loaded, opts: EncodeOptions, tower: Tower, dim: int, dtype_name: str) -> dict:
    """DIR/features.json: the tower exactly, and how the views were made."""
    from vlmtool.clip.model import is_model_dir

    pre = opts.pretrained
    weights = None
    if pre != "random" and is_model_dir(pre):
        weights = Path(pre) / "model.safetensors"
    elif pre != "random" and Path(pre).is_file():
        weights = Path(pre)
    tower_desc = {"architecture": loaded.arch, "pretrained": str(Path(pre).resolve()) if weights else pre,
                  "weights_file": str(weights.resolve()) if weights else None,
                  "weights_sha256": file_sha256(weights) if weights and weights.is_file() else None,
                  "layer": opts.layer, "cls": opts.cls, "width": dim, "image_size": tower.size, "patch_size": tower.patch,
                  "grid": [tower.side, tower.side], "rows_per_view": tower.rows,
                  "preprocessing": {"transform": "open_clip eval transform (create_model_and_transforms)", **loaded.preprocess.to_json()},
                  "precision": dtype_name, "decode": opts.decode, "dtype": "float16"}
    return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "tower": tower_desc, "anyres": opts.anyres,
            "anyres_options": tower.plan_options() if opts.anyres else None,
            "frame_budget": opts.frame_budget, "frames_per_video": tower.frames_for(), "select": opts.select,
            "sample_fps": opts.sample_fps, "pooled": opts.pooled}


def run_encode(inputs: list[str], out: str, opts: EncodeOptions) -> dict:
    """Encode every sample of the inputs (see the module docstring); the summary of this rank's
    part, or of the whole job from the rank that finishes last."""
    from vlmtool.clip.model import load_clip
    from vlmtool.core.runtime import (
        dist_info,
        precision_name,
        resolve_device,
        resolve_precision,
    )
    from vlmtool.encode.predict import check_disk, predict
    from vlmtool.encode.stream import EncodePrep

    ray = uses_ray(opts)
    dist = dist_info()
    refs = shard_refs(expand_inputs(inputs, suffixes=INPUT_SUFFIXES))
    dev = resolve_device(opts.device, dist)
    dtype = resolve_precision(opts.precision, dev)
    loaded = load_clip(opts.model, opts.pretrained, device=dev)
    tower, dim = tower_of(loaded, opts)
    check_anyres(tower)
    plan = predict([r.url for r in refs], tower, dim, opts.pooled, int(getattr(loaded.model.visual, "output_dim", 0) or 0))
    log("encode", plan["line"])
    check_disk(out, plan["bytes"])
    with Job("encode", out, opts, refs, dist) as job:
        write_json(job.out / "features.json", features_json(loaded, opts, tower, dim, precision_name(dtype)))
        records = job.records()
        if ray:
            run, about = run_records(opts, records, EncodeWorker(str(job.out), opts), "encode", progress=opts.progress)
            if about and about["precision"] != precision_name(dtype):  # the actors' device, not the driver's
                write_json(job.out / "features.json", features_json(loaded, opts, tower, dim, about["precision"]))
        else:
            prep = EncodePrep(tower, loaded.transform, opts.max_pixels, opts.decode)
            to_device = device_batches(loaded.preprocess, dev) if opts.decode == "device" else None
            run = _encode_shards(records, opts, prep, _encoder(loaded, opts, dev, dtype), opts.progress, to_device, dev.type == "cuda")

        def summarize(recs: dict) -> dict:
            return {k: sum(r.get(k, 0) for r in recs.values()) for k in ("tokens", "lm_tokens", "bytes", "oom_backoffs")}

        return {**job.finish(records, run, summarize), "predicted": {k: plan[k] for k in ("samples", "tokens", "bytes", "uncounted")}}
