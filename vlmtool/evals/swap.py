"""The swap test: the same question asked of two images that differ in the asked object (it is
in one and not in the other). A model that looks answers differently; one that answers from its
language prior gives the same answer to both. `flip_rate` is the share of pairs whose answers
differ (POPE's parsing), `both_correct` the share answered right on both sides.

Pairs come from probes: each yes-probe (image A holds X) is paired with an image B that lacks X.
With object labels, B is the image lacking X whose other objects are closest to A's (smallest
symmetric difference: the pair differs in the asked object and as little else as possible);
without them (a --questions file), B is one of the images the file itself asks about X with
label "no".
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from vlmtool.evals.data import EvalImage
from vlmtool.evals.metrics import parse_yes_no
from vlmtool.evals.pope import Probe


@dataclass(frozen=True)
class SwapPair:
    text: str
    with_object: str  # image A: holds the asked object
    without_object: str  # image B: lacks it

    def row(self) -> dict:
        return {"text": self.text, "with_object": self.with_object, "without_object": self.without_object}


def _positives(probes: list[Probe]) -> list[Probe]:
    seen: set[tuple[str, str]] = set()
    out = []
    for p in probes:
        if p.label == "yes" and (p.image, p.text) not in seen:
            seen.add((p.image, p.text))
            out.append(p)
    return out


def pairs_from_images(probes: list[Probe], images: list[EvalImage], seed: int = 0) -> list[SwapPair]:
    """One pair per distinct yes-probe, B chosen by the object labels (see the module docstring)."""
    by_name = {im.name: im for im in images if im.labels is not None}
    pairs = []
    for p in _positives(probes):
        a, obj = by_name.get(p.image), p.object
        if a is None or obj is None:
            continue
        rest = a.objects - {obj}
        cands = [im for im in by_name.values() if obj not in im.objects and im.name != a.name]
        if not cands:
            continue
        best = min(len(rest ^ im.objects) for im in cands)
        close = sorted(im.name for im in cands if len(rest ^ im.objects) == best)
        pairs.append(SwapPair(p.text, a.name, random.Random(f"{seed}:{p.image}:{p.text}").choice(close)))
    return pairs


def pairs_from_probes(probes: list[Probe], seed: int = 0) -> list[SwapPair]:
    """One pair per distinct yes-probe whose question the probes also ask of another image with label no."""
    no: dict[str, list[str]] = {}
    for p in probes:
        if p.label == "no":
            no.setdefault(p.text, []).append(p.image)
    pairs = []
    for p in _positives(probes):
        cands = sorted({img for img in no.get(p.text, ()) if img != p.image})
        if cands:
            pairs.append(SwapPair(p.text, p.image, random.Random(f"{seed}:{p.image}:{p.text}").choice(cands)))
    return pairs


def swap_metrics(pairs: list[SwapPair], with_answers: list[str | None], without_answers: list[str | None]) -> dict:
    """flip_rate and both_correct over the pairs where both sides were answered."""
    n = flips = correct = 0
    for a, b in zip(with_answers, without_answers):
        if a is None or b is None:
            continue
        pa, pb = parse_yes_no(a), parse_yes_no(b)
        n += 1
        flips += pa != pb
        correct += pa == "yes" and pb == "no"
    return {"flip_rate": round(flips / n, 6) if n else 0.0, "both_correct": round(correct / n, 6) if n else 0.0,
            "pairs": n, "unanswered": len(pairs) - n}
