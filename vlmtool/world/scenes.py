"""The world kinds: which objects a scene holds, and how they co-occur.

- `scenes` (the default): 16 object categories in four scene types, each with four objects of
  its own that appear together (a card table's heart, diamond, oval and hexagon; a night sky's
  star, crescent, circle and ring), as knives and forks do in COCO photos, and now and then a
  stray from another scene. The dataset's most frequent objects (POPE's "popular" negatives)
  are the first objects of every scene, while an image's frequent partners (the "adversarial"
  negatives) are the other objects of its own scene: the two settings ask different questions
  (eval reports how many they share). 1 to 6 objects an image.
- `shapes`: the six-shape world of the first waves (1 to 4 shapes, each with one partner).

A kind's `pick` draws an image's labels from a generator; everything else (layout, colours,
captions, truth) is shared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# --- the six-shape world of the first waves ----------------------------------------------------
SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")
# How common each shape is overall (the "popular" objects of POPE), and the partner each one
# tends to appear with (the "adversarial" co-occurring object).
POPULARITY = np.array([0.28, 0.22, 0.16, 0.14, 0.12, 0.08])
PARTNER = {"circle": "square", "square": "circle", "triangle": "star", "star": "triangle", "diamond": "hexagon", "hexagon": "diamond"}
PARTNER_PROB = 0.6
N_OBJECTS_P = np.array([0.35, 0.35, 0.2, 0.1])  # 1, 2, 3, 4 objects


def pick_shapes(rng: np.random.Generator) -> list[str]:
    n = int(rng.choice(4, p=N_OBJECTS_P)) + 1
    shapes: list[str] = []
    while len(shapes) < n:
        if shapes and rng.random() < PARTNER_PROB:
            cand = PARTNER[shapes[int(rng.integers(len(shapes)))]]
        else:
            cand = SHAPES[int(rng.choice(len(SHAPES), p=POPULARITY))]
        if cand not in shapes:
            shapes.append(cand)
    return shapes


# --- the scenes world ----------------------------------------------------------------------------
# scene type -> its own objects, the most frequent first; and how often each scene type is drawn.
SCENES: dict[str, tuple[str, ...]] = {
    "blocks": ("square", "frame", "bar", "cross"),
    "night": ("star", "crescent", "circle", "ring"),
    "cards": ("heart", "diamond", "oval", "hexagon"),
    "signs": ("arrow", "triangle", "hourglass", "semicircle"),
}
SCENE_WEIGHTS = np.array([0.28, 0.26, 0.24, 0.22])
OWN_DECAY = 0.7  # within a scene, each object is drawn 0.7 times as often as the one before it
CATEGORIES = tuple(o for objs in SCENES.values() for o in objs)
SCENE_N_OBJECTS_P = np.array([0.17, 0.22, 0.22, 0.17, 0.12, 0.10])  # 1 to 6 objects
STRAY_PROB = 0.15  # each further object comes from another scene with this probability


def pick_scene(rng: np.random.Generator) -> tuple[str, list[str]]:
    """(scene type, labels) of one image: its first object is one of the scene's own; a scene
    with more objects than its own four takes strays from other scenes."""
    scene = list(SCENES)[int(rng.choice(len(SCENES), p=SCENE_WEIGHTS))]
    own = SCENES[scene]
    own_p = OWN_DECAY ** np.arange(len(own))
    own_p /= own_p.sum()
    strays = [o for o in CATEGORIES if o not in own]
    n = int(rng.choice(len(SCENE_N_OBJECTS_P), p=SCENE_N_OBJECTS_P)) + 1
    labels: list[str] = []
    for _ in range(60):  # redraws: an image holds each category once
        if len(labels) == n:
            break
        if labels and (rng.random() < STRAY_PROB or set(own) <= set(labels)):
            cand = strays[int(rng.integers(len(strays)))]
        else:
            cand = own[int(rng.choice(len(own), p=own_p))]
        if cand not in labels:
            labels.append(cand)
    return scene, labels


@dataclass(frozen=True)
class WorldKind:
    name: str
    categories: tuple[str, ...]
    pick: Callable[[np.random.Generator], tuple[str | None, list[str]]]
    max_objects: int
    what: str


KINDS: dict[str, WorldKind] = {
    "scenes": WorldKind("scenes", CATEGORIES, pick_scene, len(SCENE_N_OBJECTS_P),
                        "16 object kinds in 4 scene types that co-occur, 1-6 objects an image"),
    "shapes": WorldKind("shapes", SHAPES, lambda rng: (None, pick_shapes(rng)), len(N_OBJECTS_P),
                        "the 6 shapes of the first waves, 1-4 an image"),
}
DEFAULT_KIND = "scenes"


def world_kind(name: str) -> WorldKind:
    from vlmtool.errors import UsageError

    if name not in KINDS:
        raise UsageError(f"unknown world kind {name!r}: use one of {', '.join(KINDS)}")
    return KINDS[name]
