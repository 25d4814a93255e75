"""POPE probes (Li et al., 2023, "Evaluating Object Hallucination in Large Vision-Language
Models"; github.com/RUCAIBox/POPE): "Is there a X in the image?" with yes/no labels, built from
the object labels of samples, or read from POPE's published JSONL files.

Sampling, as the paper describes its three settings: each image is asked about k objects it
holds (yes) and k it does not (no), the negatives drawn
- random: uniformly from the vocabulary's objects the image lacks;
- popular: the k most frequent objects of the dataset (in how many samples each appears) the
  image lacks;
- adversarial: the k objects that co-occur most often with the image's objects (summed over its
  objects) and that it lacks.
POPE uses k = 3 on COCO (3 yes + 3 no per image). Small vocabularies cannot always do that, so
here k = min(--per-image, objects present, objects absent): every image stays balanced, and an
image with no object or no absent object gives no probe. The yes objects of an image are the
same in the three settings (only the negatives differ), so settings compare like for like.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import orjson

from vlmtool.evals.data import EvalImage

SETTINGS = ("random", "popular", "adversarial")
QUESTION = "Is there a {} in the image?"  # the template of POPE's published files
_ASKED = re.compile(r"^is there an? (.+?) in the (?:image|picture)\??$", re.IGNORECASE)
MAX_LINE_BYTES = 64 << 10


@dataclass(frozen=True)
class Probe:
    question_id: int | str
    image: str
    text: str
    label: str  # "yes" | "no"

    def row(self) -> dict:
        """POPE's JSONL row."""
        return {"question_id": self.question_id, "image": self.image, "text": self.text, "label": self.label}

    @property
    def object(self) -> str | None:
        m = _ASKED.match(self.text.strip())
        return m.group(1).lower() if m else None


def object_stats(images: list[EvalImage]) -> tuple[Counter, dict[str, Counter]]:
    """(popularity: in how many samples each label appears, co-occurrence: label -> label -> samples)."""
    pop: Counter = Counter()
    co: dict[str, Counter] = {}
    for im in images:
        names = sorted(im.objects)
        pop.update(names)
        for a in names:
            co.setdefault(a, Counter()).update(b for b in names if b != a)
    return pop, co


def negatives(setting: str, present: set[str], absent: list[str], k: int, pop: Counter, co: dict[str, Counter],
              rng: random.Random) -> list[str]:
    """The k negative objects of one image in one setting (see the module docstring)."""
    if setting == "random":
        return rng.sample(sorted(absent), k)
    if setting == "popular":
        return sorted(absent, key=lambda o: (-pop[o], o))[:k]
    if setting == "adversarial":
        return sorted(absent, key=lambda o: (-sum(co.get(p, Counter())[o] for p in present), -pop[o], o))[:k]
    raise ValueError(f"unknown POPE setting {setting!r}")


def build_probes(images: list[EvalImage], per_image: int = 3, seed: int = 0, settings=SETTINGS,
                 vocabulary: list[str] = ()) -> dict[str, list[Probe]]:
    """Balanced probes per setting over the images that have object labels; the vocabulary is
    every label the images hold, plus `vocabulary`."""
    labelled = [im for im in images if im.labels is not None]
    pop, co = object_stats(labelled)
    vocab = sorted(set(pop) | set(vocabulary))
    out: dict[str, list[Probe]] = {s: [] for s in settings}
    for im in labelled:
        present = im.objects
        absent = [o for o in vocab if o not in present]
        k = min(per_image, len(present), len(absent))
        if k <= 0:
            continue
        yes = random.Random(f"{seed}:{im.name}:yes").sample(sorted(present), k)
        for s in settings:
            no = negatives(s, present, absent, k, pop, co, random.Random(f"{seed}:{im.name}:{s}"))
            for a, b in zip(yes, no):  # yes and no interleaved, as in POPE's files
                for obj, label in ((a, "yes"), (b, "no")):
                    out[s].append(Probe(len(out[s]) + 1, im.name, QUESTION.format(obj), label))
    return out


def negatives_overlap(probes: dict[str, list[Probe]]) -> dict[str, float]:
    """For each pair of settings, the share of their negative questions that are the same
    question of the same image (|A & B| / the smaller set): near 1, two settings are one
    measurement under two names."""
    import itertools

    neg = {s: {(p.image, p.text) for p in ps if p.label == "no"} for s, ps in probes.items()}
    return {f"{a}~{b}": round(len(neg[a] & neg[b]) / min(len(neg[a]), len(neg[b])), 4)
            for a, b in itertools.combinations(neg, 2) if neg[a] and neg[b]}


def write_questions(path: str | Path, probes: list[Probe]) -> Path:
    """Probes as a POPE JSONL file (written atomically)."""
    from vlmtool.core.shards import atomic_write

    atomic_write(path, b"".join(orjson.dumps(p.row()) + b"\n" for p in probes))
    return Path(path)


class BadLine(Exception):
    """A line of a questions file that is not a POPE question."""


def _probe(line: bytes, n: int) -> Probe:
    if len(line) > MAX_LINE_BYTES:
        raise BadLine(f"longer than {MAX_LINE_BYTES} bytes")
    row = orjson.loads(line)
    if not isinstance(row, dict):
        raise BadLine("not a JSON object")
    text, image, label = row.get("text"), row.get("image"), row.get("label")
    for name, v in (("text", text), ("image", image), ("label", label)):
        if not isinstance(v, str) or not v.strip():
            raise BadLine(f"{name} is missing or not a string")
    if label.strip().lower() not in ("yes", "no"):
        raise BadLine(f"label {label[:20]!r} is neither yes nor no")
    qid = row.get("question_id", n)
    if not isinstance(qid, (int, str)) or isinstance(qid, bool):
        raise BadLine("question_id is neither a number nor a string")
    return Probe(qid, image, text, label.strip().lower())


def read_questions(path: str | Path) -> tuple[list[Probe], list[dict]]:
    """A POPE JSONL file -> (probes, bad lines as {"file", "line", "detail"}); blank lines skipped."""
    from vlmtool.errors import UsageError

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"--questions {path}: {e.strerror or e}") from None
    probes, bad, seen = [], [], set()
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            probe = _probe(line, n)
            if probe.question_id in seen:  # a repeated question would count twice in every metric
                raise BadLine(f"question_id {str(probe.question_id)[:40]!r} repeats an earlier line")
            seen.add(probe.question_id)
            probes.append(probe)
        except (BadLine, orjson.JSONDecodeError) as e:
            bad.append({"file": path.name, "line": n, "detail": str(e)[:200]})
    return probes, bad
