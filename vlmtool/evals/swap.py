"""The swap test: the same question asked of two images that differ in the asked object (it is
in one and not in the other). A model that looks answers differently; one that answers from its
language prior gives the same answer to both. The headline is `both_correct`, the share of
pairs answered right on both sides (yes on A, no on B); beside it `flip_rate`, the share whose
answers differ at all (POPE's parsing), and `wrong_way`, the share that flips the wrong way (no
on A, yes on B).

Pairs come from probes: each yes-probe (image A holds X) is paired with an image B that lacks X.
With object labels, B holds as many objects as A (so "more objects, more yes" cannot flip the
answer) and, of those, the ones closest to A's other objects (smallest symmetric difference: the
pair differs in the asked object and as little else as possible); a yes-probe with no such image
gives no pair. Without labels (a --questions file), B is one of the images the file itself asks
about X with label "no".
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
    """One pair per distinct yes-probe that has a B of the same object count, chosen by the object
    labels (see the module docstring)."""
    by_name = {im.name: im for im in images if im.labels is not None}
    pairs = []
    for p in _positives(probes):
        a, obj = by_name.get(p.image), p.object
        if a is None or obj is None:
            continue
        rest = a.objects - {obj}
        cands = [im for im in by_name.values() if obj not in im.objects and len(im.objects) == len(a.objects)]
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
    """both_correct, flip_rate and wrong_way over the pairs where both sides were answered."""
    n = flips = correct = wrong = 0
    for a, b in zip(with_answers, without_answers):
        if a is None or b is None:
            continue
        pa, pb = parse_yes_no(a), parse_yes_no(b)
        n += 1
        flips += pa != pb
        correct += pa == "yes" and pb == "no"
        wrong += pa == "no" and pb == "yes"
    share = (lambda k: round(k / n, 6) if n else 0.0)
    return {"both_correct": share(correct), "flip_rate": share(flips), "wrong_way": share(wrong), "pairs": n,
            "unanswered": len(pairs) - n}
