"""train's throughput against its bound, and generation with and without the KV cache, in one run.

    python bench/train.py                                   # bundled LM, d_model 128, 4 layers
    python bench/train.py --d-model 256 --samples 2000 --steps 60

(a) the bound: the same model, stage, batches and optimizer on ready tensors (collated in
    advance, in memory): forward + backward + AdamW step, nothing else;
(b) `vlmtool train --stage 2` end to end on feature shards (reading, joining, tokenizing,
    collating, the text mix, logging, checkpoints at the end) -> (b) / (a), target >= 0.85;
(c) generation, batch of prompts with visual features, fixed length: tokens/s with the KV
    cache and with full recomputation (`--no-cache`), and their ratio.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse
import json
import runpy
import tempfile
import time
from pathlib import Path

_common = runpy.run_path(os.path.join(_HERE, "_common.py"))
machine = _common["machine"]


def make_data(root: Path, samples: int, tokens: int, width: int, shards: int = 4) -> tuple[Path, Path]:
    """Feature shards (features.json + shards/*.tar) and one instruction row per sample."""
    import numpy as np

    from vlmtool.core.shards import ShardTarWriter, write_json
    from vlmtool.features import FORMAT_NAME, FORMAT_VERSION, npy_bytes
    from vlmtool.vlm.tiny import tiny_corpus

    feats, ins = root / "feats", root / "instructions.jsonl"
    if (feats / "features.json").exists():
        return feats, ins
    rng, corpus, rows = np.random.default_rng(0), tiny_corpus(), []
    (feats / "shards").mkdir(parents=True, exist_ok=True)
    per = -(-samples // shards)
    for s in range(shards):
        w = ShardTarWriter(feats / "shards" / f"{s:05d}.tar")
        for i in range(s * per, min(samples, (s + 1) * per)):
            key, cap = f"{i:08d}", corpus[i % len(corpus)]
            meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "source": {"shard": f"{s:05d}.tar", "key": key},
                    "text": {"caption": cap}, "tokens": tokens}
            vec = rng.normal(0, 1, (tokens, width)).astype(np.float16)  # [T, D]
            w.write({"__key__": key, "tokens.npy": npy_bytes(vec), "json": json.dumps(meta).encode()})
            rows.append({"shard": f"{s:05d}.tar", "key": key, "conversations": [
                {"from": "human", "value": "<image>\nWhat does the image show?"}, {"from": "gpt", "value": cap}]})
        w.commit()
    write_json(feats / "features.json", {"format": FORMAT_NAME, "version": FORMAT_VERSION, "tower": {"width": width}})
    ins.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return feats, ins


def bound(ck_dir: Path, feats: Path, ins: Path, opts, steps: int) -> float:
    """(a): samples/s of forward + backward + optimizer step on batches collated in advance."""
    import torch

    from vlmtool.vlm.checkpoint import load_checkpoint
    from vlmtool.vlm.data import Instructions, Prep, collate_items, open_inputs
    from vlmtool.vlm.train import MAX_GRAD_NORM

    ck = load_checkpoint(ck_dir)
    model, tok = ck.model, ck.tokenizer
    model.freeze(2)
    model.train()
    src = open_inputs([str(feats)])
    prep = Prep(2, tok, rows=Instructions.load(str(ins)).rows, text_mix=opts.text_mix, seed=0)
    from vlmtool.core.shards import shard_refs

    items = [it for ref in shard_refs(src.shards) for it in prep.read(src, ref) if isinstance(it, dict)]
    B = opts.batch_size
    batches = [collate_items(items[i : i + B], tok.pad_id) for i in range(0, B * steps, B) if len(items[i : i + B]) == B]
    opt = torch.optim.AdamW(model.param_groups(0.0, lr=1e-4), lr=1e-4)
    params = [p for p in model.parameters() if p.requires_grad]

    def one(batch):
        out = model(**batch)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        opt.step()

    one(batches[0])  # warm
    t = time.perf_counter()
    for b in batches:
        one(b)
    return len(batches) * B / (time.perf_counter() - t)


def generation(ck_dir: Path, feats: Path, batch: int, new_tokens: int) -> tuple[float, float]:
    """(c): generated tokens/s with the KV cache and without, same prompts, fixed length."""
    import torch

    from vlmtool import features
    from vlmtool.vlm.infer import load_answerer

    ans = load_answerer(ck_dir, "cpu", batch_size=batch)
    samples = [s for _, s in zip(range(batch), features.read(features.feature_shards([str(feats)])))]
    from vlmtool.vlm.tokenizer import collate

    encs = [ans.tok.encode_chat([("What does the image show?", None)], n_visual=s["tokens"].shape[0]) for s in samples]
    b = collate(encs, ans.tok.pad_id, side="left")
    visual = torch.stack([torch.from_numpy(s["tokens"].astype("float32")) for s in samples])  # [B, T_v, D]
    rates = []
    for cache in (True, False):
        t = time.perf_counter()
        out = ans.model.generate(b["input_ids"], b["attention_mask"], visual=visual, max_new_tokens=new_tokens, stop_ids=(),
                                 use_cache=cache)
        rates.append(sum(map(len, out)) / (time.perf_counter() - t))
    return rates[0], rates[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=64, help="visual tokens per sample")
    ap.add_argument("--width", type=int, default=128, help="feature width D")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-layers", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: a shared CPU's cores are busy, and waiting "
                    "thread pools cost more than they give on a small model)")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "vlmtool-bench"))
    a = ap.parse_args()

    import torch

    from vlmtool.vlm.train import TrainOptions, run_train

    torch.set_num_threads(a.threads)

    root = Path(a.cache) / f"train-{a.samples}-{a.tokens}-{a.width}"
    feats, ins = make_data(root, a.samples, a.tokens, a.width)
    with tempfile.TemporaryDirectory() as tmp:
        common = {"batch_size": a.batch_size, "d_model": a.d_model, "n_layers": a.n_layers, "vocab_size": 1024, "max_seq": 512,
                  "workers": a.workers, "progress": False, "device": "cpu", "warmup": 0, "shuffle_buffer": 64, "save_every": 10**6}
        run_train([str(feats)], f"{tmp}/s1", TrainOptions(stage=1, steps=1, **common))
        s = run_train([str(feats)], f"{tmp}/s2", TrainOptions(stage=2, init=f"{tmp}/s1", instructions=str(ins), steps=a.steps, **common))
        b_rate = s["samples_per_s"]
        a_rate = bound(Path(f"{tmp}/s2"), feats, ins, TrainOptions(stage=2, **common), a.steps)
        with_cache, without = generation(Path(f"{tmp}/s2"), feats, 8, a.new_tokens)
    print(f"machine: {machine()}")
    print(f"model: bundled LM d_model {a.d_model}, {a.n_layers} layers, mlp connector; {a.samples} samples x {a.tokens} visual "
          f"tokens of width {a.width}; batch {a.batch_size}, {a.steps} steps, stage 2, text mix 0.1, {a.threads} torch thread(s), "
          f"{a.workers} loader worker(s)")
    print(f"(a) forward+backward+step on ready tensors : {a_rate:8.1f} samples/s")
    print(f"(b) vlmtool train end to end                : {b_rate:8.1f} samples/s   -> {b_rate / a_rate:.2f} of the bound")
    print(f"(c) generation, batch 8, {a.new_tokens} new tokens: KV cache {with_cache:.1f} tokens/s, no cache {without:.1f} tokens/s "
          f"-> cache {with_cache / without:.2f}x")


if __name__ == "__main__":
    main()
