"""train's throughput against its bound, the model side by side with nanoVLM's, and generation
with and without the KV cache, in one run.

    python bench/train.py                                  # the demo's shapes: 4 visual tokens of width 512
    python bench/train.py --nanovlm /path/to/nanoVLM        # + nanoVLM's model at the same dimensions
    python bench/train.py --tiny                            # seconds: the plumbing, toy sizes (CI)

(a) the bound: the same model, stage, batches and optimizer on ready tensors (collated in
    advance, in memory): forward + backward + clip + AdamW step, nothing else;
(b) `vlmtool train --stage 2` end to end on feature shards (reading, joining, tokenizing,
    collating, the text mix, logging, checkpoints at the end) -> (b) / (a), target >= 0.9; printed
    with the loader's start (its first batch's wait) and without it, the rate a long run keeps;
(c) the model alone against nanoVLM's (its ViT replaced by the same features, the same stage-2
    batches in the trainer's order, forward + backward + clip + AdamW), systems alternated over
    `--rounds`, at each of `--dims`, unpacked and packed into `--pack`-token rows (vlmtool with
    its block-diagonal mask, nanoVLM without one, as it packs); without --nanovlm only vlmtool's
    packed/unpacked ratio is printed;
(d) generation, batch of prompts with visual features, fixed length: tokens/s with the KV
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
_nano = runpy.run_path(os.path.join(_HERE, "_nanovlm.py"))

QUESTIONS = ("What does the image show?", "Describe the picture.", "Is there a red circle in the image?",
             "How many shapes can you see?", "Which colours appear?")


def conversation(rng, caption: str) -> list[dict]:
    """One to four turns about a caption: synth's mix of descriptions and yes/no probes, so the
    items' lengths vary as real stage-2 rows do."""
    turns = []
    for t in range(int(rng.integers(1, 5))):
        q = QUESTIONS[int(rng.integers(len(QUESTIONS)))]
        a = caption if q.startswith(("What", "Describe")) else ("Yes." if rng.random() < 0.5 else "No.")
        turns += [{"from": "human", "value": ("<image>\n" if t == 0 else "") + q}, {"from": "gpt", "value": a}]
    return turns


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
                    "text": {"caption": cap}, "tokens": tokens, "views": [{"kind": "base", "rows": [0, tokens]}]}
            vec = rng.normal(0, 1, (tokens, width)).astype(np.float16)  # [T, D]
            w.write({"__key__": key, "tokens.npy": npy_bytes(vec), "json": json.dumps(meta).encode()})
            rows.append({"shard": f"{s:05d}.tar", "key": key, "conversations": conversation(rng, cap)})
        w.commit()
    write_json(feats / "features.json", {"format": FORMAT_NAME, "version": FORMAT_VERSION, "tower": {"width": width}})
    ins.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return feats, ins


def stage2_batches(tok, feats: Path, ins: Path, batch_size: int, steps: int, text_mix: float) -> list[list[dict]]:
    """The first `steps` stage-2 batches of items in the trainer's order (its stream, shuffle
    buffer and batcher, one process)."""
    from functools import partial

    from vlmtool.core.shards import shard_refs
    from vlmtool.core.train import Batcher, TrainStream
    from vlmtool.vlm.data import Instructions, Prep, open_inputs

    src = open_inputs([str(feats)])
    prep = Prep(2, tok, rows=Instructions.load(str(ins)).rows, text_mix=text_mix, seed=0, max_len=512)
    stream = TrainStream(shard_refs(src.shards), None, 0, 0, 1, buffer=64, read_shard=partial(prep.read, src))
    batcher = Batcher(iter(stream), batch_size)
    return [batcher.next_batch() for _ in range(steps)]


def timed_steps(model, batches: list, opt, params) -> float:
    """Seconds of forward + backward + clip + AdamW over the batches (ready tensors)."""
    import torch

    from vlmtool.vlm.train import MAX_GRAD_NORM

    t = time.perf_counter()
    for b in batches:
        out = model(**b)
        loss = out.loss if hasattr(out, "loss") else out[1]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        opt.step()
    return time.perf_counter() - t


def systems_at(dims: tuple, tok, width: int, n_visual: int, nano) -> dict:
    """{name: (model, convert(batch) -> its inputs)} at d_model x layers x heads x vocab."""
    import torch

    from vlmtool.vlm.config import VLMConfig
    from vlmtool.vlm.model import VLM

    d, layers, heads, vocab = dims
    cfg = VLMConfig(d_model=d, n_layers=layers, n_heads=heads, n_kv_heads=max(1, heads // 2), vocab_size=vocab, max_seq=512,
                    d_vision=width, image_token_id=tok.image_id, image_newline_id=tok.newline_id)
    torch.manual_seed(0)
    out = {"vlmtool": (VLM(cfg), lambda b: {**b, "logits": False})}  # as the trainer calls it
    if nano is not None:
        torch.manual_seed(0)
        out["nanoVLM"] = (_nano["build"](nano, cfg, n_visual), lambda b: _nano["inputs"](b, n_visual))
    return out


def compare(tok, item_batches: list, dims: tuple, pack: int, rounds: int, width: int, n_visual: int, nano) -> dict:
    """samples/s of each system on the same batches, unpacked and packed, alternated `rounds`
    times (one order per round, reversed every other round)."""
    import torch

    from vlmtool.vlm.data import collate_items

    systems = systems_at(dims, tok, width, n_visual, nano)
    samples = sum(map(len, item_batches))
    runs = {}
    for packed in (0, pack):
        ready = [collate_items(items, tok.pad_id, pack=packed) for items in item_batches]
        for name, (model, convert) in systems.items():
            model.train()
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=1e-4)
            batches = [convert(b) for b in ready]
            timed_steps(model, batches[:1], opt, params)  # warm
            runs[(name, packed)] = (model, batches, opt, params)
    seconds = dict.fromkeys(runs, 0.0)
    for r in range(rounds):
        for key in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            model, batches, opt, params = runs[key]
            seconds[key] += timed_steps(model, batches, opt, params)
    return {key: samples * rounds / t for key, t in seconds.items()}


def padding(tok, item_batches: list, pack: int) -> tuple[float, float, float]:
    """(mean item length, padding share of the slots unpacked, slots packed / slots unpacked)."""
    from vlmtool.vlm.data import collate_items

    lengths = [len(it["ids"]) for b in item_batches for it in b]
    plain = sum(collate_items(b, tok.pad_id)["input_ids"].numel() for b in item_batches)
    packed = sum(collate_items(b, tok.pad_id, pack=pack)["input_ids"].numel() for b in item_batches)
    return sum(lengths) / len(lengths), 1 - sum(lengths) / plain, packed / plain


def bound(ck_dir: Path, item_batches: list) -> float:
    """(a): samples/s of forward + backward + clip + optimizer step on batches collated in advance."""
    import torch

    from vlmtool.vlm.checkpoint import load_checkpoint
    from vlmtool.vlm.data import collate_items

    ck = load_checkpoint(ck_dir)
    model, tok = ck.model, ck.tokenizer
    model.freeze(2)
    model.train()
    batches = [{**collate_items(items, tok.pad_id), "logits": False} for items in item_batches]  # as the trainer calls it
    opt = torch.optim.AdamW(model.param_groups(0.0, lr=1e-4), lr=1e-4)
    params = [p for p in model.parameters() if p.requires_grad]
    timed_steps(model, batches[:1], opt, params)  # warm
    return sum(map(len, item_batches)) / timed_steps(model, batches, opt, params)


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


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=4, help="visual tokens per sample (the demo's: 4)")
    ap.add_argument("--width", type=int, default=512, help="feature width D (the demo's tower: 512)")
    ap.add_argument("--d-model", type=int, default=128, help="(a), (b): the trained LM's width")
    ap.add_argument("--n-layers", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--dims", default="256x4x4x4096,128x4x4x510", help="(c): d_model x layers x heads x vocab, comma-separated")
    ap.add_argument("--compare-steps", type=int, default=10, help="(c): batches per system per round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--pack", type=int, default=128, help="(c): packed row length in tokens")
    ap.add_argument("--nanovlm", default=os.environ.get("NANOVLM"), help="a nanoVLM checkout (or $NANOVLM); without it (c) "
                    "measures vlmtool alone")
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: a shared CPU's cores are busy, and waiting "
                    "thread pools cost more than they give on a small model)")
    ap.add_argument("--tiny", action="store_true", help="toy sizes, seconds: checks the plumbing, not the figures")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "vlmtool-bench"))
    a = ap.parse_args()
    if a.tiny:
        a.samples, a.steps, a.d_model, a.n_layers, a.dims, a.compare_steps, a.rounds, a.new_tokens = 64, 3, 32, 1, "32x1x2x510", 2, 1, 4
        a.workers = 0
    return a


def report_compare(rates: dict, dims: tuple, pack: int) -> None:
    d, layers, heads, vocab = dims
    names = sorted({n for n, _ in rates}, reverse=True)  # vlmtool, nanoVLM
    for packed in (0, pack):
        line = ", ".join(f"{n} {rates[(n, packed)]:.1f}" for n in names)
        what = f"packed to {pack}-token rows" if packed else "unpacked"
        ratio = f" -> vlmtool/nanoVLM {rates[('vlmtool', packed)] / rates[('nanoVLM', packed)]:.3f}x" if "nanoVLM" in names else ""
        print(f"(c) d{d}, {layers} layers, {heads} heads, vocab {vocab}, {what}: {line} samples/s{ratio}")
    print(f"(c) d{d}: vlmtool packed/unpacked {rates[('vlmtool', pack)] / rates[('vlmtool', 0)]:.2f}x")


def main() -> None:
    a = parse_args()
    import torch

    from vlmtool.vlm.checkpoint import load_checkpoint
    from vlmtool.vlm.train import TrainOptions, run_train

    torch.set_num_threads(a.threads)
    # the trainer sets its own threads from the idle CPUs (core/runtime.py): pin it to the same
    # count, or (b) and, after it, (a) and (c) run at whatever the machine's load was then
    os.environ["VLMTOOL_THREADS"] = str(a.threads)
    nano = _nano["load"](a.nanovlm) if a.nanovlm else None
    feats, ins = make_data(Path(a.cache) / f"train-v2-{a.samples}-{a.tokens}-{a.width}", a.samples, a.tokens, a.width)
    dims = [tuple(int(x) for x in d.split("x")) for d in a.dims.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        common = {"batch_size": a.batch_size, "d_model": a.d_model, "n_layers": a.n_layers, "vocab_size": min(v for *_, v in dims),
                  "max_seq": 512, "workers": a.workers, "progress": False, "device": "cpu", "warmup": 0, "shuffle_buffer": 64,
                  "save_every": 10**6}
        run_train([str(feats)], f"{tmp}/s1", TrainOptions(stage=1, steps=1, **common))
        s = run_train([str(feats)], f"{tmp}/s2", TrainOptions(stage=2, init=f"{tmp}/s1", instructions=str(ins), steps=a.steps, **common))
        tok = load_checkpoint(f"{tmp}/s2").tokenizer
        item_batches = stage2_batches(tok, feats, ins, a.batch_size, max(a.steps, a.compare_steps), 0.1)
        b_rate, b_steady, a_rate = s["samples_per_s"], s["samples_per_s_after_startup"], bound(Path(f"{tmp}/s2"), item_batches[: a.steps])
        rates = [compare(tok, item_batches[: a.compare_steps], d, a.pack, a.rounds, a.width, a.tokens, nano) for d in dims]
        with_cache, without = generation(Path(f"{tmp}/s2"), feats, 8, a.new_tokens)
    mean_len, pad_share, packed_slots = padding(tok, item_batches[: a.compare_steps], a.pack)
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the end")
    print(f"data: {a.samples} samples x {a.tokens} visual tokens of width {a.width}; stage-2 items {mean_len:.0f} tokens on average, "
          f"{pad_share:.0%} of a batch's slots padding; packed to {a.pack}: {packed_slots:.2f}x the slots; tokenizer vocab {tok.vocab_size}")
    print(f"model (a), (b): bundled LM d_model {a.d_model}, {a.n_layers} layers, mlp connector; batch {a.batch_size}, {a.steps} steps, "
          f"stage 2, text mix 0.1, {a.threads} torch thread(s), {a.workers} loader worker(s)")
    print(f"(a) forward+backward+step on ready tensors : {a_rate:8.1f} samples/s")
    print(f"(b) vlmtool train end to end                : {b_rate:8.1f} samples/s   -> ratio {b_rate / a_rate:.2f} of the bound "
          f"(the loader's start, {s['startup_seconds']:.1f} s, included)")
    print(f"(b) the same run once its first batch came  : {b_steady:8.1f} samples/s   -> ratio {b_steady / a_rate:.2f} of the bound")
    if nano is None:
        print("(c) nanoVLM: not given (--nanovlm PATH or $NANOVLM): vlmtool alone")
    for d, r in zip(dims, rates):
        report_compare(r, d, a.pack)
    print(f"(d) generation, batch 8, {a.new_tokens} new tokens: KV cache {with_cache:.1f} tokens/s, no cache {without:.1f} tokens/s "
          f"-> cache {with_cache / without:.2f}x")


if __name__ == "__main__":
    main()
