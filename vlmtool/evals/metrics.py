"""POPE's answer parsing and metrics (yes = the positive class).

Both follow POPE's own evaluation script (RUCAIBox/POPE, evaluate.py; Li et al., 2023,
"Evaluating Object Hallucination in Large Vision-Language Models", sec. 3): an answer keeps its
first sentence, commas are dropped, and it reads "no" when the words "no" or "not" occur in it,
else "yes". We lower-case and strip punctuation around words ("No!" reads no), which POPE's
script does not; `unclear` counts answers whose first word is neither yes nor no, so a model that
rambles is visible even though its answers are scored.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z']+")


def parse_yes_no(text: str | None) -> str:
    """An answer -> "yes" or "no", by POPE's rule (see the module docstring)."""
    first = (text or "").split(".", 1)[0].replace(",", "").lower()
    words = _WORD.findall(first)
    return "no" if ("no" in words or "not" in words) else "yes"


def is_clear(text: str | None) -> bool:
    """Whether the answer starts with the word yes or no."""
    words = _WORD.findall((text or "").lower())
    return bool(words) and words[0] in ("yes", "no")


def _div(a: float, b: float) -> float:
    return a / b if b else 0.0


def confusion(labels: list[str], predictions: list[str]) -> dict[str, int]:
    """Counts of true/false positives/negatives, "yes" being positive."""
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    c = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    for y, p in zip(labels, predictions):
        c[("t" if y == p else "f") + ("p" if p == "yes" else "n")] += 1
    return c


def scores(c: dict[str, int]) -> dict[str, float]:
    """accuracy, precision, recall, f1, yes_ratio from a confusion matrix (POPE's evaluate.py);
    a 0/0 is 0.0 (always "no": precision, recall and F1 are 0)."""
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    n = tp + fp + tn + fn
    precision, recall = _div(tp, tp + fp), _div(tp, tp + fn)
    return {"accuracy": _div(tp + tn, n), "precision": precision, "recall": recall,
            "f1": _div(2 * precision * recall, precision + recall), "yes_ratio": _div(tp + fp, n)}


def pope_metrics(labels: list[str], answers: list[str | None]) -> dict:
    """POPE's five numbers, the confusion matrix, `n` and `unclear` for raw answers."""
    preds = [parse_yes_no(a) for a in answers]
    c = confusion(labels, preds)
    out = {k: round(v, 6) for k, v in scores(c).items()}
    return {**out, **c, "n": len(labels), "unclear": sum(not is_clear(a) for a in answers)}
