"""`vlmtool world`'s options: one frozen dataclass, each field with its default and its
command-line form (core/options.py), light to import (the CLI builds its parameters from it)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from vlmtool.core.options import PROGRESS, option


@dataclass(frozen=True)
class WorldOptions:
    """`vlmtool world`'s options (see its --help): the world's settings (make_world's keywords),
    then the hostile corpus's (--faults)."""

    samples: int = option(64, "Number of image-caption samples.", flags=("--samples", "-n"), min=1)
    shard_size: int = option(16, "Samples per shard.", min=1)
    seed: int = option(0, "Same seed, same bytes.")
    kind: str = option("scenes", "Which objects: scenes (16 kinds of object in 4 scene types that co-occur, 1-6 an image) or "
                       "shapes (the 6 shapes of the first waves, 1-4 an image).")
    mismatch: float = option(0.0, "Fraction of samples given another scene's caption.", min=0.0, max=1.0)
    broken: float = option(0.0, "Fraction of broken samples (every kind the core rejects).", min=0.0, max=1.0)
    broken_tar: bool = option(False, "Cut the last shard inside a member's data.")
    videos: int = option(0, "Short videos with known static and moving segments.", min=0)
    sizes: str = option("varied", "Image size mix: varied (96 px to 1920x1080, tall, wide), small (64-160 px) or square "
                        "(64-160 px, square only).")
    plain: float = option(0.0, "Fraction of captions that name the objects without their colours ('A circle above a star.').",
                          min=0.0, max=1.0)
    faults: bool = option(False, "Write the hostile corpus instead: every fault class a reader must survive, with the exact "
                          "expected outcome of each in OUT/faults.json. Only --seed and --huge-caption-bytes apply.")
    huge_caption_bytes: int | None = option(None, "With --faults: the size of the huge caption (default 3 MiB; 300000000 for "
                                            "memory tests).", metavar="BYTES")
    progress: bool = PROGRESS()


# The settings only a world has (--faults refuses them when they differ from these defaults).
WORLD_ONLY = ("kind", "samples", "shard_size", "mismatch", "broken", "broken_tar", "videos", "sizes", "plain")
WORLD_DEFAULTS = {f.name: f.default for f in fields(WorldOptions) if f.name in WORLD_ONLY}
