"""The demo's ablation, in one run, from a finished `vlmtool demo` folder (docs/benchmarks.md):

(a) no negatives: stage 2 again, from the demo's stage 1, on synth's data with the negative
    ("Is there a X?" -> "No") conversations removed: its yes-ratio shows the prior they correct;
(b) connectors: xattn (Flamingo-style gated cross-attention) and native (early fusion), each
    trained through stages 1 and 2 from the demo's stage 0 with the demo's settings (the mlp
    projector is the demo's own checkpoint);
then every checkpoint is evaluated on the demo's test world (POPE's three settings, blind,
swap, CHAIR) and printed side by side with its visual tokens, KV bytes and train seconds. Every
arm uses the finished demo's own options (DEMO/demo.json: steps, sizes, seed), so the table
compares connectors and data under the demo's recipe.

    vlmtool demo -o vlmtool-demo && python bench/ablation.py vlmtool-demo
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse
import json
import runpy
from pathlib import Path

_common = runpy.run_path(os.path.join(_HERE, "_common.py"))
machine = _common["machine"]


def without_negatives(src: Path, dst: Path) -> dict:
    """synth's rows with every presence probe answered no taken out: the negative task's rows,
    and the no-probe turn the captions teacher writes into each conversation."""
    import re

    import orjson

    probe = re.compile(r"(<image>\n)?Is there an? .+ in the image\?")
    kept = dropped = turns_dropped = 0
    with open(src, "rb") as f, open(dst, "wb") as g:
        for line in f:
            row = orjson.loads(line)
            if row.get("task") == "negative":
                dropped += 1
                continue
            conv, out = row["conversations"], []
            for q, a in zip(conv[::2], conv[1::2]):
                if probe.fullmatch(q["value"]) and a["value"].startswith("No"):
                    turns_dropped += 1
                    if q["value"].startswith("<image>\n") and len(conv) > 2:
                        conv[conv.index(q) + 2]["value"] = "<image>\n" + conv[conv.index(q) + 2]["value"]
                    continue
                out += [q, a]
            if out:
                g.write(orjson.dumps({**row, "conversations": out}) + b"\n")
                kept += 1
    return {"kept": kept, "dropped": dropped, "no_turns_dropped": turns_dropped}


def dry(tmp: Path) -> None:
    """--tiny: the plumbing without a demo folder (a real run needs one, about 40 minutes): the
    no-negatives filter on toy synth rows, and every arm's stage plan."""
    from vlmtool.demo import DemoOptions, stage_plan

    rows = [{"key": "a", "task": "captions", "conversations": [{"from": "human", "value": "<image>\nIs there a star in the image?"},
                                                                {"from": "gpt", "value": "No."},
                                                                {"from": "human", "value": "Describe it."}, {"from": "gpt", "value": "A circle."}]},
            {"key": "b", "task": "negative", "conversations": [{"from": "human", "value": "<image>\nIs there a cube in the image?"},
                                                                {"from": "gpt", "value": "No."}]},
            {"key": "c", "task": "captions", "conversations": [{"from": "human", "value": "<image>\nDescribe it."},
                                                                {"from": "gpt", "value": "A square."}]}]
    (tmp / "ins.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    counts = without_negatives(tmp / "ins.jsonl", tmp / "no-neg.jsonl")
    kept = [json.loads(line) for line in (tmp / "no-neg.jsonl").read_text().splitlines()]
    assert counts == {"kept": 2, "dropped": 1, "no_turns_dropped": 1}, counts
    assert kept[0]["conversations"][0]["value"] == "<image>\nDescribe it.", kept[0]
    arms = {c: stage_plan(tmp, tmp / "ins.jsonl", DemoOptions(progress=False), c, f"{c}-stage", tmp / "stage0") for c in ("xattn", "native")}
    assert all([s for s, *_ in plan] == [1, 2] for plan in arms.values()), arms
    print(f"machine: {machine()}")
    print(f"(tiny: plumbing only, no training) no-negatives rows kept: {counts['kept']}/{len(rows)}, ratio {counts['kept'] / len(rows):.2f}x; "
          f"arms planned: mlp-no-negatives, {', '.join(arms)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("demo", nargs="?", help="a finished `vlmtool demo` folder")
    ap.add_argument("--json", action="store_true", help="print the comparison as JSON")
    ap.add_argument("--tiny", action="store_true", help="check the plumbing on toy rows in seconds (no demo folder, no training)")
    args = ap.parse_args()
    if args.tiny:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            return dry(Path(tmp))
    if not args.demo:
        ap.error("give a finished `vlmtool demo` folder (or --tiny)")

    from dataclasses import fields

    from vlmtool.demo import DemoOptions, run_stages, stage_plan
    from vlmtool.evals import EvalOptions, compare
    from vlmtool.evals.report import comparison_table

    demo = Path(args.demo)
    if not (demo / "eval" / "report.json").exists():
        sys.exit(f"{demo}: not a finished demo folder (no stage2): run `vlmtool demo -o {demo}` first")
    saved = json.loads((demo / "demo.json").read_text())["options"] if (demo / "demo.json").exists() else {}
    known = {f.name for f in fields(DemoOptions)}
    if saved and "tune_batch" not in saved:  # a demo from before --tune-batch: its stage 2 took stages 0 and 1's batch
        saved["tune_batch"] = saved.get("batch_size", DemoOptions.batch_size)
    opts = DemoOptions(**{**{k: v for k, v in saved.items() if k in known}, "progress": False})  # the demo's own recipe
    out, steps = demo / "ablation", {}
    out.mkdir(exist_ok=True)
    feats, instructions = demo / "features", demo / "synth" / "instructions.jsonl"
    no_neg = out / "instructions-no-negatives.jsonl"
    counts = without_negatives(instructions, no_neg)
    print(f"[ablation] without negatives: {counts['kept']} conversations ({counts['dropped']} negative ones removed, "
          f"{counts['no_turns_dropped']} no-answers taken out of the others)", file=sys.stderr)
    _, folder, kw, what = stage_plan(out, no_neg, opts, prefix="no-negatives-stage", stage0=demo / "stage0")[-1]
    plan = [(2, folder, {**kw, "init": str(demo / "stage1")}, what)]  # stage 2 only, from the demo's own stage 1
    models = {"mlp": demo / "stage2", "mlp-no-negatives": run_stages(feats, plan, steps, "no-negatives")}
    for connector in ("xattn", "native"):
        plan = stage_plan(out, instructions, opts, connector, f"{connector}-stage", demo / "stage0")
        src = feats
        if connector == "native":  # early fusion reads the kept images themselves, at the tower's 64 px in 8 px patches
            src = demo / "filter" / "shards"
            plan = [(stage, folder, {**kw, "image_size": 64, "patch_size": 8}, what) for stage, folder, kw, what in plan]
        models[connector] = run_stages(src, plan, steps, connector)
    test = demo / "test" if (demo / "test").is_dir() else demo / "heldout"  # a demo folder of the first waves had "heldout"
    result = compare([str(p) for p in models.values()], [str(test)],
                     EvalOptions(device="cpu", chair_images=60, progress=False), out=out / "eval")
    names = list(models)
    rows = [{"model": name, **{k: v for k, v in row.items() if k != "checkpoint"}} for name, row in zip(names, result["table"])]
    print(comparison_table(rows), file=sys.stderr)
    yes = {name: {s: r["pope"][s]["yes_ratio"] for s in r["pope"]} for name, r in zip(names, result["checkpoints"].values())}
    summary = {"machine": machine(), "options": {k: getattr(opts, k) for k in sorted(known)}, "rows": rows, "yes_ratio": yes, "train": steps, "no_negatives": counts}
    (out / "ablation.json").write_text(json.dumps(summary, indent=1))
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"yes-ratio by setting: {json.dumps(yes)}")


if __name__ == "__main__":
    main()
