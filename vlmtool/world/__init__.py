"""The shapes world: a deterministic synthetic image-caption dataset in webdataset shards, and a
hostile corpus of every fault a reader must survive.

- scenes.py: the world kinds: `scenes` (16 object kinds in 4 scene types that co-occur, the
  default) and `shapes` (the 6 shapes of the first waves);
- shapes.py: drawing (objects in named colours at known boxes, captions with spatial
  relations), one record per sample (`make_sample`), videos (`make_video`);
- build.py: `make_world`, the shards, videos and world.json (settings, counts, object tables);
- faults.py: `make_faults`, the hostile corpus and its truth file faults.json;
- folder.py: the output folder, replaced whole on a rerun;
- options.py: `vlmtool world`'s options (light: the CLI builds its parameters from them).
Same seed, same bytes. The names below are imported when first used, so that the CLI can read
the options without numpy.
"""

_NAMES = {
    "build": ("make_world", "object_tables"),
    "faults": ("make_faults",),
    "folder": ("claim_folder",),
    "scenes": ("CATEGORIES", "DEFAULT_KIND", "KINDS", "N_OBJECTS_P", "PARTNER", "PARTNER_PROB", "POPULARITY", "SCENES", "SHAPES",
               "pick_scene", "pick_shapes"),
    "shapes": ("BROKEN_KINDS", "COLORS", "SIZE_MIXES", "Obj", "background", "bomb_png", "caption_for", "draw_objects", "layout",
               "make_sample", "make_video", "relation", "render_scene"),
}
_MODULE = {name: module for module, names in _NAMES.items() for name in names}

__all__ = ["BROKEN_KINDS", "CATEGORIES", "COLORS", "DEFAULT_KIND", "KINDS", "SCENES", "pick_scene", "N_OBJECTS_P", "PARTNER", "PARTNER_PROB", "POPULARITY", "SHAPES", "SIZE_MIXES", "Obj",
           "background", "bomb_png", "caption_for", "claim_folder", "draw_objects", "layout", "make_faults", "make_sample",
           "make_video", "make_world", "object_tables", "pick_shapes", "relation", "render_scene"]


def __getattr__(name: str):
    if name not in _MODULE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{_MODULE[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
