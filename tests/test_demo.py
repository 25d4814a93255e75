"""`vlmtool demo` end to end at toy sizes: every stage runs, the summary carries the keys scripts
rely on, and a rerun resumes from the stages' own records instead of redoing them."""

import pytest


@pytest.mark.slow
def test_the_whole_pipeline_runs_reports_and_resumes(tmp_path):
    from vlmtool.demo import DemoOptions, run_demo

    opts = DemoOptions(samples=64, test=16, dev=16, clip_samples=128, clip_steps=3, clip_batch=32, lm_steps=2, align_steps=2,
                       tune_steps=3, tune_batch=4, d_model=32, n_layers=1, batch_size=4, progress=False)
    out = run_demo(str(tmp_path / "demo"), opts)
    for setting in ("random", "popular", "adversarial"):
        for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
            assert 0.0 <= out["pope"][setting][key] <= 1.0
            assert 0.0 <= out["blind"][setting][key] <= 1.0
    assert 0.0 <= out["swap"]["both_correct"] <= 1.0 and out["swap"]["pairs"] > 0
    assert out["worlds"]["test"]["seed"] == 900_002 and out["worlds"]["train"]["seed"] == 0
    assert set(out["negatives_overlap"]) == {"random~popular", "random~adversarial", "popular~adversarial"}
    assert out["float_path"]["kernels"] and out["float_path"]["threads"] >= 1  # which float path the figures came from
    assert {"chair_i", "chair_s"} <= set(out["chair"])
    assert (tmp_path / "demo" / "stage2").is_dir() and out["checkpoint"] == str(tmp_path / "demo" / "stage2")
    steps = out["steps"]
    assert steps["encode"]["ok"] == steps["filter"]["kept"] and steps["synth"]["instructions"] > 0
    assert steps["train-2"]["steps"] == 3 and steps["clip-train"]["steps"] == 3

    again = run_demo(str(tmp_path / "demo"), opts)
    assert again["pope"] == out["pope"] and again["checkpoint"] == out["checkpoint"]
    for stage in ("clip-train", "train-0", "train-1", "train-2"):  # nothing trained again on the rerun
        assert again["steps"][stage].get("loss_first") is None, stage
    assert "eval" not in again["steps"]  # the same weights: their report is reused
    from dataclasses import replace

    more = run_demo(str(tmp_path / "demo"), replace(opts, tune_steps=5))  # the same path, other weights: evaluated again
    assert more["steps"]["train-2"]["steps"] == 5 and "eval" in more["steps"]
