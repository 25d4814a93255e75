"""Checks on a teacher's answer before it becomes training data; each rejection has a reason.

empty, truncated (the server stopped at its token limit, or the text stops mid-sentence),
refusal, degenerate (a phrase repeated over and over, or almost no words), duplicate (the same
long answer already produced for another request), hallucination (an object named as present
that the sample's metadata says is absent), not_negative (a negative question answered yes),
wrong_probe (a presence probe answered against the metadata: yes to an absent object, no to one
that is there).
"""

from __future__ import annotations

import re

REASONS = ("empty", "truncated", "refusal", "degenerate", "duplicate", "hallucination", "not_negative", "wrong_probe", "unparsable")

_REFUSAL = re.compile(r"\b(i'?m sorry|i am sorry|i cannot|i can't|i can not|as an ai|i'?m unable|i am unable|"
                      r"cannot (?:help|assist|see)|unable to (?:view|see|process) (?:the )?image)\b", re.IGNORECASE)
_NEGATION = re.compile(r"\b(no|not|none|never|without|absent|isn'?t|aren'?t|doesn'?t|don'?t|nor)\b", re.IGNORECASE)
_SENTENCE = re.compile(r"[^.!?;\n]+[.!?;]?")
_WORD = re.compile(r"[a-z']+")


class Rejected(Exception):
    def __init__(self, reason: str, detail: str = ""):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def _plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "x", "ch", "sh")) else "s")


def mentioned(text: str, vocabulary: list[str]) -> set[str]:
    """Vocabulary objects that `text` asserts, skipping sentences that negate (no star, not a square)."""
    found: set[str] = set()
    for sentence in _SENTENCE.findall(text.lower()):
        if _NEGATION.search(sentence):
            continue
        words = set(_WORD.findall(sentence))
        for v in vocabulary:
            if v in words or _plural(v) in words or (" " in v and v in sentence):
                found.add(v)
    return found


def check_answer(answer: str, finish_reason: str | None = None) -> None:
    text = (answer or "").strip()
    if not text:
        raise Rejected("empty")
    if finish_reason == "length":
        raise Rejected("truncated", "the server stopped at max_tokens")
    if _REFUSAL.search(text):
        raise Rejected("refusal", text[:80])
    words = _WORD.findall(text.lower())
    if len(words) < 1:
        raise Rejected("degenerate", "no words")
    if len(words) >= 12:
        grams = [" ".join(words[i : i + 3]) for i in range(len(words) - 2)]
        top = max(grams.count(g) for g in set(grams))
        if top >= 4 and top / len(grams) > 0.2:
            raise Rejected("degenerate", "a phrase repeats")
        if len(set(words)) / len(words) < 0.25:
            raise Rejected("degenerate", "few distinct words")
    if len(text) > 40 and text[-1] not in '.!?)"\'' and not text.endswith(("...", "…")):
        raise Rejected("truncated", "ends mid-sentence")


_PROBE = re.compile(r"^(?:<image>\s*)?is there (?:an? )?(.+?) in the (?:image|picture)\??$", re.IGNORECASE)


def _check_probes(turns: list[dict], present: list[str]) -> None:
    """A presence probe answered against the truth: yes for an object that is there, no for one
    that is not (`wrong_probe` otherwise)."""
    have = {p.lower() for p in present}
    for t in turns:
        m = _PROBE.match(str(t.get("question", "")).strip())
        said = re.match(r"^\W*(yes|no)\b", t["answer"].strip(), re.IGNORECASE)
        if m and said and (said.group(1).lower() == "yes") != (m.group(1).lower() in have):
            raise Rejected("wrong_probe", f"{t['question'][:60]} -> {t['answer'][:40]}")


def validate(turns: list[dict], task: str, present: list[str] | None, vocabulary: list[str], finish_reason: str | None = None,
             absent: str | None = None, absents: tuple[str, ...] = ()) -> list[dict]:
    """Turns that pass every check, or Rejected with the first failing reason. `absent` and
    `absents` are the objects the request asked about as absent (an answer may name them)."""
    if not turns:
        raise Rejected("empty", "no turns")
    for t in turns:
        check_answer(t.get("answer", ""), finish_reason)
        if not str(t.get("question", "")).strip():
            raise Rejected("empty", "a turn has no question")
    if task == "negative":
        first = turns[0]["answer"].strip().lower()
        if not re.match(r"^(no\b|there is no|there are no|there isn'?t|i don'?t see|nope)", first):
            raise Rejected("not_negative", turns[0]["answer"][:80])
    if task == "probes" and present is not None:
        _check_probes(turns, present)
    if present is not None:
        named = set()
        for t in turns:
            named |= mentioned(t["answer"], vocabulary)
        wrong = sorted(named - set(present) - ({absent} if absent else set()) - set(absents))
        if wrong:
            raise Rejected("hallucination", ", ".join(wrong))
    return turns


def normalize(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))
