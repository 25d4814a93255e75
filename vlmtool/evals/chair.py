"""CHAIR (Rohrbach et al., 2018, "Object Hallucination in Image Captioning";
github.com/LisaAnne/Hallucination, utils/chair.py): the objects a description mentions, matched
against a vocabulary, versus the objects the image holds.

    CHAIR_i = hallucinated mentions / all object mentions
    CHAIR_s = descriptions with at least one hallucinated mention / all descriptions

As in the reference chair.py, every mention counts (a hallucinated object named twice counts
twice in CHAIR_i). Words map to objects through a synonym list in the reference's format (one
object a line: `label, synonym, synonym, ...`; the first name is the label) plus the labels of
the data themselves, with simple plural handling (circles -> circle, boxes -> box, berries ->
berry, knives -> knife) where the reference uses a lemmatizer; multi-word names ("traffic
light") match before single words.
"""

from __future__ import annotations

import re
from pathlib import Path

DESCRIBE = "Describe the image in detail."
_WORD = re.compile(r"[a-z]+")


def singulars(word: str) -> list[str]:
    """The word and the singular forms it may be (simple English plurals)."""
    out = [word]
    if word.endswith("ies") and len(word) > 4:
        out.append(word[:-3] + "y")
    if word.endswith("ves") and len(word) > 4:
        out += [word[:-3] + "f", word[:-3] + "fe"]
    if word.endswith("es") and len(word) > 3:
        out.append(word[:-2])
    if word.endswith("s") and not word.endswith("ss") and len(word) > 2:
        out.append(word[:-1])
    return out


class Vocabulary:
    """Object names -> labels: each label names itself, and synonyms name their label."""

    def __init__(self, labels=(), synonyms: dict[str, list[str]] | None = None):
        self.names: dict[tuple[str, ...], str] = {}
        for label in labels:
            self.add(label, label)
        for label, syns in (synonyms or {}).items():
            for s in [label, *syns]:
                self.add(s, label)
        self.longest = max((len(k) for k in self.names), default=1)

    def add(self, name: str, label: str) -> None:
        words = tuple(_WORD.findall(name.lower()))
        if words:
            self.names.setdefault(words, label.lower())

    @property
    def labels(self) -> set[str]:
        return set(self.names.values())

    def _match(self, words: list[str], i: int) -> tuple[str, int] | None:
        for n in range(min(self.longest, len(words) - i), 0, -1):
            head = tuple(words[i:i + n - 1])
            for last in singulars(words[i + n - 1]):
                label = self.names.get(head + (last,))
                if label is not None:
                    return label, n
        return None

    def canonical(self, label: str) -> str:
        """A data label as the vocabulary names it (a synonym -> its label)."""
        said = self.mentions(label)
        return said[0] if len(said) == 1 else label.lower()

    def mentions(self, text: str) -> list[str]:
        """The labels a text mentions, once per mention, in order."""
        words = _WORD.findall((text or "").lower())
        out, i = [], 0
        while i < len(words):
            hit = self._match(words, i)
            if hit is None:
                i += 1
                continue
            out.append(hit[0])
            i += hit[1]
        return out


def read_synonyms(path: str | Path) -> dict[str, list[str]]:
    """A synonym file in the reference's format (`label, synonym, ...` a line; # comments)."""
    from vlmtool.errors import UsageError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--vocabulary {path}: cannot be read ({e})") from None
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        names = [n.strip() for n in line.split("#", 1)[0].split(",") if n.strip()]
        if names:
            out.setdefault(names[0], []).extend(names[1:])
    if not out:
        raise UsageError(f"--vocabulary {path} names no object (write one `label, synonym, ...` a line)")
    return out


def chair_scores(descriptions: list[str], truths: list[set[str]], vocab: Vocabulary) -> dict:
    """CHAIR_i and CHAIR_s over descriptions and the object labels of their images, plus counts
    and the objects most often hallucinated."""
    from collections import Counter

    mentions = hallucinated = bad_descriptions = 0
    invented: Counter = Counter()
    for text, truth in zip(descriptions, truths):
        said = vocab.mentions(text)
        held = {vocab.canonical(t) for t in truth}
        wrong = [o for o in said if o not in held]
        mentions += len(said)
        hallucinated += len(wrong)
        bad_descriptions += bool(wrong)
        invented.update(wrong)
    n = len(descriptions)
    return {"chair_i": round(hallucinated / mentions, 6) if mentions else 0.0,
            "chair_s": round(bad_descriptions / n, 6) if n else 0.0,
            "descriptions": n, "mentions": mentions, "hallucinated": hallucinated,
            "mentions_per_description": round(mentions / n, 4) if n else 0.0,
            "most_hallucinated": dict(invented.most_common(5))}
