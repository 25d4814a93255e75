"""Instruction tasks (LLaVA-Instruct's conversation, detail and reasoning, plus negative
"is there an X?" questions and POPE-style presence probes), their prompts, and the requests one
sample turns into."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from vlmtool.errors import UsageError

TASKS = ("conversation", "detail", "reasoning", "negative", "probes")
MAX_PROBES = 3  # presence probes of each answer (yes, no) in one conversation: POPE asks 3 of each
PROMPT_DIR = Path(__file__).parent / "prompts"
PLACEHOLDERS = ("caption", "objects", "question")  # what a task prompt may name in braces


def load_prompts(override: str | None = None) -> dict[str, str]:
    """The package's prompt files, each replaceable by a file of the same name in `override`.
    A task prompt is a str.format template over PLACEHOLDERS (literal braces doubled)."""
    if override and not Path(override).is_dir():
        names = ", ".join(f"{n}.txt" for n in ("system", *TASKS))
        raise UsageError(f"--prompts {override}: not a folder of prompt files ({names})")
    prompts = {}
    for name in ("system", *TASKS):
        path = Path(override) / f"{name}.txt" if override and (Path(override) / f"{name}.txt").exists() else PROMPT_DIR / f"{name}.txt"
        try:
            prompts[name] = path.read_text(encoding="utf-8").strip()
            if name != "system":
                prompts[name].format(**dict.fromkeys(PLACEHOLDERS, ""))
        except UnicodeDecodeError:
            raise UsageError(f"--prompts: {path} is not UTF-8 text") from None
        except (KeyError, IndexError, ValueError) as e:
            raise UsageError(f"--prompts: {path} is not a template over {{{'}, {'.join(PLACEHOLDERS)}}} "
                             f"(double literal braces): {type(e).__name__}: {e}") from None
    return prompts


def parse_tasks(spec: str) -> dict[str, float]:
    """`conversation,detail` (every sample gets each) or `conversation=2,negative=1` (weights)."""
    out: dict[str, float] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, w = part.partition("=")
        if name not in TASKS:
            raise UsageError(f"unknown task {name!r}: use {', '.join(TASKS)}")
        try:
            out[name] = float(w) if w else 0.0
        except ValueError:
            raise UsageError(f"task weight {part!r} is not a number") from None
        if out[name] < 0:
            raise UsageError(f"task weight {part!r} is negative")
    if not out:
        raise UsageError("--tasks names no task")
    return out


def presence_probes(present: list[str], absents: tuple[str, ...] | list[str], first: bool = False) -> list[tuple[str, bool]]:
    """POPE's balance in one conversation: (object, answer is yes) for as many objects that are
    there (the last ones, or with `first` the first ones, up to MAX_PROBES) as absent ones, in
    an order drawn from the objects themselves, so no position tells the answer (a fixed
    yes-then-no order lets a model answer the second probe without looking)."""
    import random

    k = max(1, min(MAX_PROBES, len(present), len(absents)))
    asked = [(o, True) for o in (present if first else present[::-1])[:k]] + [(a, False) for a in list(absents)[:k]]
    random.Random("\x1f".join(o for o, _ in asked)).shuffle(asked)
    return asked


def probe_question(obj: str) -> str:
    return f"Is there {article(obj)} in the image?"


def unit(*parts: str) -> float:
    h = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def tasks_for(key: str, weights: dict[str, float], per_sample: int) -> list[str]:
    """Every listed task, or (with weights) `per_sample` tasks drawn by weight without
    replacement, deterministically from the sample key."""
    if all(w == 0 for w in weights.values()):
        return list(weights)
    pool = {t: w for t, w in weights.items() if w > 0}
    chosen: list[str] = []
    while pool and len(chosen) < per_sample:
        total = sum(pool.values())
        u = unit(key, str(len(chosen))) * total
        acc = 0.0
        for t, w in pool.items():
            acc += w
            if u < acc:
                break
        chosen.append(t)
        del pool[t]
    return [t for t in TASKS if t in chosen]


@dataclass
class Request:
    key: str  # hash of (sample, task, prompt, teacher, model): the exactly-once identity
    sample_key: str
    shard: str  # shard name
    shard_url: str
    task: str
    prompt: str
    system: str
    image_bytes: bytes | None
    image_ext: str | None
    caption: str | None
    objects: list[dict] | None = None  # {"label", "color", "bbox"} (synth.objects.sample_objects); None: not known
    width: int = 0
    height: int = 0
    question: str | None = None  # negative task: the question asked
    absent: str | None = None  # negative task, and the conversation of a teacher that balances probes: an absent object
    image_tokens: int = 0
    # the conversation of a teacher that balances probes: absent objects to ask about, one per
    # POPE setting (the job's --negatives mode first: `absent`; then the others), all distinct
    absents: tuple[str, ...] = ()
    # with --balance present or all: the objects that are there in the order their yeses are
    # asked (those whose noes lead first); empty: the teacher's own order
    present_order: tuple[str, ...] = ()


def request_key(sample_key: str, shard_url: str, task: str, prompt: str, teacher: str, model: str) -> str:
    h = hashlib.sha256(f"{shard_url}\x1f{sample_key}\x1f{task}\x1f{prompt}\x1f{teacher}\x1f{model}".encode())
    return h.hexdigest()[:24]


def article(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word
