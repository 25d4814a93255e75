import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import orjson
import pytest

from conftest import FIXTURES, json_out, run_cli, sha256_of, world_truth


def _rows(job):
    return [orjson.loads(line) for line in (job / "scores.jsonl").read_bytes().splitlines()]


def _auroc(pos, neg):
    p, n = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((p > n).mean() + 0.5 * (p == n).mean())


@pytest.mark.slow  # trains a CLIP for 150 steps (shared fixture)
def test_clip_train_learns_to_tell_matched_from_mismatched(trained_clip, heldout_world, tmp_path):
    model_dir, summary = trained_clip
    assert summary["loss_last"] < summary["loss_first"] / 2
    job = tmp_path / "f"
    s = json_out(run_cli("filter", heldout_world, "--out", job, "--pretrained", model_dir, "--keep-fraction", "0.7",
                         "--json", "--no-progress", "--plot"))
    truth = world_truth(heldout_world)
    rows = [r for r in _rows(job) if r["score"] is not None]
    pos = [r["score"] for r in rows if not truth[r["key"]]["mismatched"]]
    neg = [r["score"] for r in rows if truth[r["key"]]["mismatched"]]
    assert _auroc(pos, neg) >= 0.95
    removed = [r for r in rows if not r["kept"]]
    tp = sum(truth[r["key"]]["mismatched"] for r in removed)
    precision, recall = tp / len(removed), tp / len(neg)
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)
    assert s["kept"] == round(0.7 * s["ok"])
    assert (job / "report.png").exists() and s["modality_gap"] > 0
    report = orjson.loads((job / "report.json").read_bytes())
    assert sum(b["count"] for b in report["histogram"]) == s["ok"]
    kept_rows = sum(r["kept"] for r in rows)
    assert {f"kept ({s['kept']})", f"dropped ({s['ok'] - s['kept']})"} <= set(report["chart_legend"]) and kept_rows == s["kept"]
    for k in ("model", "pretrained", "preprocess", "precision"):
        assert report[k] is not None


@pytest.mark.slow  # trains a CLIP for 150 steps (shared fixture)
def test_scores_equal_open_clip_encode(trained_clip, tmp_path):
    import torch
    from PIL import Image

    from vlmtool.clip.model import load_clip

    model_dir, _ = trained_clip
    job = tmp_path / "f"
    run_cli("filter", FIXTURES / "shapes", "--out", job, "--pretrained", model_dir, "--min-score", "0", "--preprocess", "exact", "--no-progress")
    loaded = load_clip(None, str(model_dir))
    import io

    checked = 0
    for shard in sorted((FIXTURES / "shapes").glob("*.tar")):
        with tarfile.open(shard) as tf:
            members = {}
            for m in tf:
                key, ext = m.name.split(".", 1)
                members.setdefault(key, {})[ext] = tf.extractfile(m).read()
        for row in (r for r in _rows(job) if r["shard"] == shard.stem and r["score"] is not None):
            rec = members[row["key"]]
            img = Image.open(io.BytesIO(rec["jpg"])).convert("RGB")
            with torch.no_grad():
                fi = loaded.model.encode_image(loaded.transform(img)[None], normalize=True)
                ft = loaded.model.encode_text(loaded.tokenizer([rec["txt"].decode().strip()]), normalize=True)
            assert row["score"] == pytest.approx(float((fi * ft).sum()), abs=1e-5)
            checked += 1
    assert checked >= 15


@pytest.mark.slow  # trains a CLIP for 150 steps (shared fixture)
def test_fast_preprocessing_stays_within_0005_of_exact(trained_clip, tmp_path):
    from vlmtool.world import make_world

    model_dir, _ = trained_clip
    w = make_world(tmp_path / "w", samples=120, shard_size=60, seed=7, sizes="varied")["out"]
    scores = {}
    for mode in ("fast", "exact"):
        run_cli("filter", w, "--out", tmp_path / mode, "--pretrained", model_dir, "--min-score", "0", "--preprocess", mode, "--no-progress")
        scores[mode] = [r["score"] for r in _rows(tmp_path / mode)]
    dev = max(abs(a - b) for a, b in zip(scores["fast"], scores["exact"]))
    assert dev <= 0.005


@pytest.mark.slow  # trains a CLIP for 150 steps (shared fixture)
def test_keep_fraction_half_across_two_torchrun_ranks(trained_clip, heldout_world, tmp_path):
    model_dir, _ = trained_clip
    one = json_out(run_cli("filter", heldout_world, "--out", tmp_path / "one", "--pretrained", model_dir, "--keep-fraction", "0.5",
                           "--json", "--no-progress", "--workers", "1"))
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29541", "-m", "vlmtool",
                        "filter", str(heldout_world), "--out", str(tmp_path / "two"), "--pretrained", str(model_dir),
                        "--keep-fraction", "0.5", "--json", "--no-progress", "--workers", "1", "--wait-timeout", "120"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = _rows(tmp_path / "two")
    valid = sum(r["score"] is not None for r in rows)
    kept = [r for r in rows if r["kept"]]
    assert len(kept) == round(valid / 2) == one["kept"]
    kept_in_shards = set()
    for t in sorted((tmp_path / "two" / "shards").glob("*.tar")):
        with tarfile.open(t) as tf:
            kept_in_shards |= {m.name.split(".")[0] for m in tf}
    assert kept_in_shards == {r["key"] for r in kept}
    assert (tmp_path / "one" / "scores.jsonl").read_bytes() == (tmp_path / "two" / "scores.jsonl").read_bytes()
    manifest = orjson.loads((tmp_path / "two" / "manifest.json").read_bytes())
    assert {rec["rank"] for rec in manifest["shards"].values()} == {0, 1}


@pytest.mark.slow  # trains a CLIP for 150 steps (shared fixture)
def test_broken_samples_are_counted_skipped_and_listed(trained_clip, heldout_world, tmp_path):
    model_dir, _ = trained_clip
    s = json_out(run_cli("filter", heldout_world, "--out", tmp_path / "f", "--pretrained", model_dir, "--min-score", "0.5",
                         "--json", "--no-progress", "--min-side", "70"))
    truth = world_truth(heldout_world)
    broken = {}
    for t in truth.values():
        if "broken" in t:
            broken[t["broken"]] = broken.get(t["broken"], 0) + 1
    small = sum(1 for t in truth.values() if "broken" not in t and min(t["width"], t["height"]) < 70)
    missing_image = broken.pop("missing_image", 0)  # still a record: counted under its reason
    rejected = dict(s["rejected"])
    assert rejected.pop("filter:min_side") == small > 0
    assert rejected == {**broken, **({"missing_image": missing_image} if missing_image else {})}
    rows = _rows(tmp_path / "f")
    assert len(rows) == s["samples"] == 400
    assert all((r["score"] is None) == (r["reason"] not in (None, "below_threshold")) for r in rows)


@pytest.mark.slow  # trains a CLIP for 150 steps (shared fixture)
def test_kept_shards_hold_original_bytes_and_keys(trained_clip, tmp_path):
    """Local tars are copied block for block; piped ones record by record: the same members."""
    model_dir, _ = trained_clip
    common = ["--pretrained", model_dir, "--keep-fraction", "0.5", "--no-progress"]
    run_cli("filter", FIXTURES / "shapes", "--out", tmp_path / "f", *common)
    piped = "\n".join(f"pipe:cat {p}" for p in sorted((FIXTURES / "shapes").glob("*.tar")))
    run_cli("filter", "-", "--out", tmp_path / "p", *common, input=piped)
    manifest = orjson.loads((tmp_path / "f" / "manifest.json").read_bytes())
    assert {r["copy"] for r in manifest["select"].values()} == {"blocks"}
    for shard in sorted((FIXTURES / "shapes").glob("*.tar")):
        with tarfile.open(shard) as a:
            src = {m.name: a.extractfile(m).read() for m in a}
        outs = []
        for job in ("f", "p"):
            with tarfile.open(tmp_path / job / "shards" / shard.name) as b:
                outs.append({m.name: b.extractfile(m).read() for m in b})
        assert outs[0] and outs[0] == outs[1]
        assert all(src[name] == data for name, data in outs[0].items())
        kept = {r["key"] for r in _rows(tmp_path / "f") if r["kept"] and r["shard"] == shard.stem}
        assert {name.split(".")[0] for name in outs[0]} == kept


@pytest.mark.slow  # trains a CLIP for 150 steps (shared fixture)
def test_sigkill_then_rerun_gives_the_same_bytes(trained_clip, heldout_world, tmp_path):
    model_dir, _ = trained_clip
    args = ["--pretrained", str(model_dir), "--keep-fraction", "0.6", "--no-progress", "--workers", "1", "--batch-size", "16"]
    inputs = "\n".join(f"pipe:sleep 0.4; cat {p}" for p in sorted(heldout_world.glob("*.tar")))
    run_cli("filter", "-", "--out", tmp_path / "clean", *args, input=inputs)
    job = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "vlmtool", "filter", "-", "--out", str(job), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    proc.stdin.write(inputs.encode())
    proc.stdin.close()
    deadline = time.time() + 120
    while len(list((job / "_done" / "score").glob("*.json"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 2 <= len(list((job / "_done" / "score").glob("*.json"))) < 8
    run_cli("filter", "-", "--out", job, *args, input=inputs)
    assert (job / "scores.jsonl").read_bytes() == (tmp_path / "clean" / "scores.jsonl").read_bytes()
    for t in sorted((tmp_path / "clean" / "shards").glob("*.tar")):
        assert sha256_of(t) == sha256_of(job / "shards" / t.name)


@pytest.mark.slow  # seven CLI runs, one loading a model
def test_missing_weights_and_bad_arguments_say_what_to_do(tmp_path):
    env = {"HF_HUB_OFFLINE": "1"}
    p = run_cli("filter", FIXTURES / "shapes", "--out", tmp_path / "a", "--model", "ViT-B-32", "--pretrained", "openai",
                "--min-score", "0.28", env=env, check=False, timeout=120)
    assert p.returncode == 2 and "could not be loaded" in p.stderr and "clip-train" in p.stderr and "Traceback" not in p.stderr
    # the corrected rerun in the same folder is not refused: the failed start made nothing
    p = run_cli("filter", FIXTURES / "shapes", "--out", tmp_path / "a", "--model", "tiny-clip", "--pretrained", "random",
                "--min-score", "0.28", "--json", "--no-progress", check=False)
    assert p.returncode == 0, p.stderr
    # no weights at all: refused (random weights must be asked for)
    p = run_cli("filter", FIXTURES / "shapes", "--out", tmp_path / "b", "--model", "tiny-clip", "--min-score", "0.3", check=False)
    assert p.returncode == 2 and "--pretrained" in p.stderr and not (tmp_path / "b" / "manifest.json").exists()
    p = run_cli("filter", FIXTURES / "shapes", "--out", tmp_path / "b", "--model", "tiny-clip", "--pretrained", "random", check=False)
    assert p.returncode == 2 and "exactly one of" in p.stderr
    for bad in ("nan", "1.5"):
        p = run_cli("filter", FIXTURES / "shapes", "--out", tmp_path / "b", "--model", "tiny-clip", "--pretrained", "random",
                    "--min-score", bad, check=False)
        assert p.returncode == 2 and "--min-score" in p.stderr and "Traceback" not in p.stderr
    p = run_cli("filter", FIXTURES / "shapes", "--out", tmp_path / "c", "--model", "no-such-arch", "--pretrained", "random", "--min-score", "0",
                check=False)
    assert p.returncode == 2 and "unknown open_clip architecture" in p.stderr
    p = run_cli("filter", FIXTURES / "shapes", "--out", tmp_path / "d", "--model", "tiny-clip", "--pretrained", "/nope/x.pt",
                "--min-score", "0", check=False)
    assert p.returncode == 2 and "no such file" in p.stderr


def test_select_keep_on_arrays_matches_the_row_by_row_selection(tmp_path):
    """The global top fraction (ties by shard, then position) and the threshold, from scores
    held as arrays, are those of the reference that kept every row in Python lists."""
    from vlmtool.core.runtime import Dist
    from vlmtool.core.shards import JobDir, shard_refs
    from vlmtool.filter import select_keep

    refs = shard_refs([f"/x/{n}.tar" for n in ("a", "b", "c", "d")])
    rng = np.random.default_rng(0)
    table = {}
    for ref in refs[:3]:  # d: no rows at all
        scores = [None if rng.random() < 0.2 else float(rng.choice([0.1, 0.25, 0.3, rng.random()])) for _ in range(40)]
        table[ref.name] = scores
        path = tmp_path / "_scores" / f"{ref.name}.jsonl"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"".join(orjson.dumps({"key": f"k{i}", "score": s, "reason": None if s is not None else "x"}) + b"\n"
                                  for i, s in enumerate(scores)))
    (tmp_path / "_scores" / "d.jsonl").write_bytes(b"")
    job = JobDir(tmp_path, "filter", refs, Dist(), stage="score")
    flat = [(s, ref.index, i) for ref in refs for i, s in enumerate(table.get(ref.name, [])) if s is not None]
    for frac in (0.1, 0.37, 0.5, 1.0):
        k = int(round(frac * len(flat)))
        top = sorted(flat, key=lambda t: (-t[0], t[1], t[2]))[:k]
        threshold, kept, n = select_keep(job, None, frac)
        assert n == len(flat) and threshold == top[-1][0]
        assert {name: sorted(map(int, v)) for name, v in kept.items()} == {
            r.name: sorted(i for _, j, i in top if j == r.index) for r in refs}
    threshold, kept, n = select_keep(job, 0.25, None, refs[1:3])
    assert threshold == 0.25 and set(kept) == {"b", "c"}
    assert {name: list(map(int, v)) for name, v in kept.items()} == {
        r.name: [i for i, s in enumerate(table[r.name]) if s is not None and s >= 0.25] for r in refs[1:3]}


def test_the_chart_legend_counts_the_jobs_own_kept_and_dropped(tmp_path):
    """A histogram bin that straddles the threshold holds kept and dropped samples: the legend
    takes the job's counts, not the bars'."""
    from vlmtool.filter import _plot

    hist = [{"from": 0.10, "to": 0.11, "count": 5}, {"from": 0.11, "to": 0.12, "count": 7}, {"from": 0.12, "to": 0.13, "count": 3}]
    legend = _plot(tmp_path / "r.png", hist, 0.115, 0.5, n_kept=6, n_dropped=9)
    assert {"kept (6)", "dropped (9)"} <= set(legend) and (tmp_path / "r.png").stat().st_size > 0
