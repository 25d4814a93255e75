"""Does the model look at the pixels? Object-hallucination evals for any model that answers
questions about images (an `Answerer`; a checkpoint folder becomes one through
`vlmtool.vlm.infer.load_answerer`).

    from vlmtool.evals import evaluate, compare, EvalOptions
    summary = evaluate("ckpt/", ["world/"])                     # pope + blind + swap + chair
    summary["pope"]["adversarial"]["f1"], summary["swap"]["both_correct"], summary["chair"]["chair_i"]
    evaluate("ckpt/", opts=EvalOptions(questions=("coco_pope_random.json",), image_root="val2014/"))
    compare(["mlp/", "xattn/", "native/"], ["world/"], out="cmp/")

- pope.py: POPE probes (Li et al., 2023): built from object labels in three settings (random,
  popular, adversarial) or read from POPE's JSONL files; metrics.py: POPE's parsing and scores;
- swap.py: the same question on two images that differ in the asked object;
- blind: every probe again with `answer(None, questions)` (the language prior);
- chair.py: CHAIR_i and CHAIR_s (Rohrbach et al., 2018) over detail descriptions;
- cost.py: visual tokens, KV-cache bytes and train seconds per checkpoint;
- tasks.py: the task registry (TASKS: pope, blind, swap, chair), each task one object that runs
  on an evaluation's shared context and says what it adds to the table, rows and chart;
- report.py: the table, report.json and report.png; run.py: evaluate and compare.
"""

from vlmtool.evals.answerer import Answerer, load_answerer
from vlmtool.evals.pope import (
    SETTINGS,
    Probe,
    build_probes,
    read_questions,
    write_questions,
)
from vlmtool.evals.run import TASKS, EvalOptions, compare, evaluate, write_probes

__all__ = ["SETTINGS", "TASKS", "Answerer", "EvalOptions", "Probe", "build_probes", "compare", "evaluate", "load_answerer",
           "read_questions", "write_probes", "write_questions"]
