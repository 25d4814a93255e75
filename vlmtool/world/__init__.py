"""The shapes world: a deterministic synthetic image-caption dataset in webdataset shards, and a
hostile corpus of every fault a reader must survive.

- scenes.py: the world kinds: `scenes` (16 object kinds in 4 scene types that co-occur, the
  default) and `shapes` (the 6 shapes of the first waves);
- shapes.py: drawing (objects in named colours at known boxes, captions with spatial
  relations), one record per sample (`make_sample`), videos (`make_video`);
- build.py: `make_world`, the shards, videos and world.json (settings, counts, object tables);
- faults.py: `make_faults`, the hostile corpus and its truth file faults.json;
- folder.py: the output folder, replaced whole on a rerun.
Same seed, same bytes.
"""

from vlmtool.world.build import make_world, object_tables
from vlmtool.world.faults import make_faults
from vlmtool.world.folder import claim_folder
from vlmtool.world.scenes import (
    CATEGORIES,
    DEFAULT_KIND,
    KINDS,
    N_OBJECTS_P,
    PARTNER,
    PARTNER_PROB,
    POPULARITY,
    SCENES,
    SHAPES,
    pick_scene,
    pick_shapes,
)
from vlmtool.world.shapes import (
    BROKEN_KINDS,
    COLORS,
    SIZE_MIXES,
    Obj,
    background,
    bomb_png,
    caption_for,
    draw_objects,
    layout,
    make_sample,
    make_video,
    relation,
    render_scene,
)

__all__ = ["BROKEN_KINDS", "CATEGORIES", "COLORS", "DEFAULT_KIND", "KINDS", "SCENES", "pick_scene", "N_OBJECTS_P", "PARTNER", "PARTNER_PROB", "POPULARITY", "SHAPES", "SIZE_MIXES", "Obj",
           "background", "bomb_png", "caption_for", "claim_folder", "draw_objects", "layout", "make_faults", "make_sample",
           "make_video", "make_world", "object_tables", "pick_shapes", "relation", "render_scene"]
