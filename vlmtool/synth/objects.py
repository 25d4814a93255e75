"""What synth knows about objects, read from the data itself (never from a built-in world).

- `sample_objects`: a sample's objects from its metadata field (`--objects-field`, default
  `objects`), already type-checked by the core (`core.samples.check_objects`), as plain
  `{"label", "color", "bbox"}` dicts that a teacher can use without further checks.
- `count_objects`: one pass over the job's inputs (through the core's record stream) counting in
  how many samples each label appears (popularity) and each pair appears together
  (co-occurrence): the tables POPE draws its popular and adversarial negatives from. A shapes
  world writes the same tables into its world.json under `objects`.
- `read_vocabulary`: a `--vocabulary` file, one object name a line: the candidate absent objects.
- `absent_object`: the object a negative question asks about, or why there is none.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vlmtool.core.samples import object_labels
from vlmtool.errors import UsageError
from vlmtool.synth.tasks import unit

# Pairs are counted among at most this many distinct labels of one sample (a sample naming
# thousands of objects must not add millions of pairs).
MAX_PAIR_LABELS = 64
MAX_VOCABULARY_BYTES = 16 << 20


@dataclass
class ObjectTables:
    """Labels seen in the data, in how many samples each appears, and each pair together."""

    popularity: dict[str, int] = field(default_factory=dict)
    cooccurrence: dict[str, dict[str, int]] = field(default_factory=dict)
    samples: int = 0  # samples read
    with_objects: int = 0  # of which name their objects

    @property
    def vocabulary(self) -> list[str]:
        return sorted(self.popularity)

    def to_json(self) -> dict:
        return {"samples": self.samples, "with_objects": self.with_objects, "vocabulary": self.vocabulary,
                "popularity": dict(sorted(self.popularity.items())),
                "cooccurrence": {a: dict(sorted(r.items())) for a, r in sorted(self.cooccurrence.items())}}

    @classmethod
    def from_json(cls, d: dict) -> ObjectTables:
        return cls(dict(d["popularity"]), {a: dict(r) for a, r in d["cooccurrence"].items()}, d["samples"], d["with_objects"])


def count_objects(refs, read, objects_field: str, progress: bool = False) -> ObjectTables:
    """Popularity and co-occurrence of the labels named in the samples' metadata, over `refs`.
    Rejected records are not counted; images are not decoded."""
    import sys

    from tqdm import tqdm

    from vlmtool.core.records import Reject, iter_samples

    pop: Counter = Counter()
    pairs: Counter = Counter()
    t = ObjectTables()
    for ref in tqdm(refs, desc="synth: counting objects", unit="shard", file=sys.stderr, disable=not progress or len(refs) < 2):
        for s in iter_samples(ref, read, objects_field=objects_field):
            if isinstance(s, Reject):
                continue
            t.samples += 1
            labels = object_labels(s.meta, objects_field)
            if labels is None:
                continue
            t.with_objects += 1
            names = sorted(set(labels))
            pop.update(names)
            pairs.update(itertools.combinations(names[:MAX_PAIR_LABELS], 2))
    t.popularity = dict(pop)
    for (a, b), n in pairs.items():
        t.cooccurrence.setdefault(a, {})[b] = n
        t.cooccurrence.setdefault(b, {})[a] = n
    return t


def read_vocabulary(path: str) -> list[str]:
    """Object names, one a line (blank lines and `#` comments skipped), in file order, once each."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_VOCABULARY_BYTES:
            raise UsageError(f"--vocabulary {path}: larger than {MAX_VOCABULARY_BYTES >> 20} MiB; give one object name a line")
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--vocabulary {path}: no such file (give a text file with one object name a line)") from None
    except IsADirectoryError:
        raise UsageError(f"--vocabulary {path}: is a folder (give a text file with one object name a line)") from None
    except UnicodeDecodeError:
        raise UsageError(f"--vocabulary {path}: not UTF-8 text (give one object name a line)") from None
    except OSError as e:
        raise UsageError(f"--vocabulary {path}: cannot be read ({e.strerror or e})") from None
    names = [line.strip() for line in text.splitlines()]
    names = list(dict.fromkeys(n for n in names if n and not n.startswith("#")))
    if not names:
        raise UsageError(f"--vocabulary {path}: names no object (one object name a line)")
    return names


def sample_objects(meta: dict, objects_field: str) -> list[dict] | None:
    """The sample's objects as {"label", "color", "bbox"} (color and bbox may be None), or None
    when its metadata has no such field. The core has checked the field's type."""
    labels = object_labels(meta, objects_field)
    if labels is None:
        return None
    out = []
    for o, label in zip(meta[objects_field], labels):
        d = o if isinstance(o, dict) else {}
        color, box = d.get("color"), d.get("bbox")
        out.append({"label": label, "color": color if isinstance(color, str) and color.strip() else None,
                    "bbox": list(box) if isinstance(box, list) and len(box) == 4 else None})
    return out


def object_name(o: dict) -> str:
    return f"{o['color']} {o['label']}" if o["color"] else o["label"]


def describe_objects(objects: list[dict] | None) -> str:
    """The objects as the prompts' `{objects}`: `red circle at [x0, y0, x1, y1]; ...`."""
    if not objects:
        return "unknown"
    return "; ".join(object_name(o) + (f" at {o['bbox']}" if o["bbox"] is not None else "") for o in objects)


def absent_object(key: str, present: list[str], candidates: list[str], mode: str, tables: ObjectTables,
                  surplus: Mapping[str, int] | None = None) -> str | None:
    """An object the image does not hold, chosen as POPE does (Li et al. 2023, "Evaluating Object
    Hallucination in Large Vision-Language Models", section 3.2): random, popular (the most
    frequent in the data), or adversarial (the one that co-occurs most often with an object
    that is there). Deterministic in the sample key.

    With `surplus` (each object's yes answers minus its no answers asked so far), the draw
    keeps POPE's order of hardness but passes over an object whose noes already lead: the first
    object of the mode's order (adversarial: the present objects' top partners, strongest first,
    then the popular order; popular: by popularity; random: drawn) whose yeses do not trail,
    else the one whose yeses lead most. Popular negatives drawn alone would teach "a frequent
    object: no", a prior a blind model reads off POPE's popular setting."""
    absent = [v for v in candidates if v not in set(present)]
    if not absent:
        return None
    def by_popularity() -> list[str]:  # most frequent first, ties to the larger name: POPE's draw is its head
        return sorted(absent, key=lambda v: (tables.popularity.get(v, 0), v), reverse=True)

    if mode == "adversarial":
        strength: dict[str, int] = {}
        for p in present:
            row = tables.cooccurrence.get(p, {})
            seen = [x for x in absent if row.get(x, 0) > 0]
            if seen:
                top = min(seen, key=lambda x: (-row[x], x))
                strength[top] = max(strength.get(top, 0), row[top])
        if strength:
            partners = sorted(strength)
            if surplus is None:
                return partners[int(unit(key, "adv") * len(partners))]
            order = sorted(partners, key=lambda x: (-strength[x], unit(key, "adv", x)))
            return _first_not_trailing(order + [v for v in by_popularity() if v not in strength], surplus)
    if mode in ("popular", "adversarial") and any(tables.popularity.get(v, 0) for v in absent):
        popular = by_popularity()
        return popular[0] if surplus is None else _first_not_trailing(popular, surplus)
    if surplus is None:
        return absent[int(unit(key, "neg") * len(absent))]
    return _first_not_trailing(sorted(absent, key=lambda v: unit(key, "neg", v)), surplus)


def _first_not_trailing(order: list[str], surplus: Mapping[str, int]) -> str:
    """The first object of `order` whose yeses do not trail its noes, else the one whose yeses lead most."""
    for v in order:
        if surplus.get(v, 0) >= 0:
            return v
    return max(order, key=lambda v: surplus.get(v, 0))
