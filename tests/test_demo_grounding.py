"""The demo's claim, at a size CI can afford: a reduced demo (small worlds, few steps) trains a
model that looks at the pixels, measured on its test world against its own blind baseline and
by the swap test; the same checkpoint with its connector zeroed (the image's information cut)
fails the same checks, so the test can fail when grounding breaks.

The margins were measured on the reduced demo (docs/benchmarks.md) and set below what it gave.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

REDUCED = dict(samples=800, test=120, dev=16, clip_samples=1000, clip_steps=400, clip_batch=64, lm_steps=100, align_steps=50,
               tune_steps=900, tune_batch=32, d_model=128, n_layers=4, batch_size=32, progress=False)
# Measured on this reduced demo (seed 0, one torch thread, in its own process, 2-core Intel Xeon;
# docs/benchmarks.md): POPE accuracy over blind by 0.14-0.18 (default AVX-512 kernels) and 0.17-0.35
# (ATEN_CPU_CAPABILITY=avx2), swap both_correct 0.34 and 0.42; after grouped-query attention moved
# to SDPA's enable_gqa (K/V gradients 1e-7 apart), 0.12-0.18 and 0.14-0.29, both_correct 0.31 and
# 0.33; after the head moved to the label tokens and packed rows to the batch's longest item,
# 0.14-0.20 and 0.09-0.15, both_correct 0.33 and 0.28. The bounds were set at half the lowest of
# the first four runs; they stay under every run since (lowest margin 0.09, both_correct 0.28). The
# blinded copy (accuracy 0.44-0.52 in every setting, both_correct 0.00) fails all four checks.
MARGIN = 0.06  # POPE accuracy with the image over blind accuracy, in every setting
BOTH_CORRECT = 0.15  # swap pairs answered right on both images


def grounding_failures(report: dict) -> list[str]:
    """What the report says against "the model looks" (empty: it looks)."""
    bad = [f"{s}: accuracy {report['pope'][s]['accuracy']:.3f} not {MARGIN} above blind {report['blind'][s]['accuracy']:.3f}"
           for s in report["pope"] if report["pope"][s]["accuracy"] < report["blind"][s]["accuracy"] + MARGIN]
    if report["swap"]["both_correct"] < BOTH_CORRECT:
        bad.append(f"swap both_correct {report['swap']['both_correct']:.3f} < {BOTH_CORRECT}")
    return bad


def reduced_demo(out) -> dict:
    """The reduced demo's summary, run in a fresh Python process on one torch thread: a model this
    small learns to look on some float paths and not on others, and both the thread count and what
    earlier tests leave in this process (threads, allocator, cached kernels) pick the path; inside
    the full suite, in-process, the same seed cleared blind by 0.05 where alone it cleared 0.18."""
    code = ("import json, sys; from vlmtool.demo import DemoOptions, run_demo; "
            "print(json.dumps(run_demo(sys.argv[1], DemoOptions(**json.loads(sys.argv[2])))))")
    p = subprocess.run([sys.executable, "-c", code, str(out), json.dumps(REDUCED)], capture_output=True, text=True,
                       env={**os.environ, "VLMTOOL_THREADS": "1"}, timeout=1800)
    assert p.returncode == 0, p.stderr[-4000:]
    return json.loads(p.stdout)


@pytest.mark.slow
def test_a_reduced_demo_looks_and_a_blinded_copy_does_not(tmp_path):
    from safetensors.torch import load_file, save_file

    from vlmtool.evals import EvalOptions, evaluate

    out = reduced_demo(tmp_path / "demo")
    assert out["worlds"]["test"]["folder"].endswith("test") and out["negatives_overlap"]["popular~adversarial"] < 0.5
    assert grounding_failures(out) == [], (out["pope"], out["blind"], out["swap"])

    blinded = tmp_path / "blinded"
    shutil.copytree(out["checkpoint"], blinded)
    weights = load_file(str(blinded / "model.safetensors"))
    save_file({k: (v * 0 if k.startswith("connector.") else v) for k, v in weights.items()}, str(blinded / "model.safetensors"))
    report = evaluate(str(blinded), [out["worlds"]["test"]["folder"]], EvalOptions(device="cpu", tasks=("pope", "swap"),
                                                                                  progress=False))
    report["blind"] = out["blind"]  # the blind baseline reads no image: the same model without its connector's output
    assert grounding_failures(report), (report["pope"], report["swap"])
