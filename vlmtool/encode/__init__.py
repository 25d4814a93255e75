"""`vlmtool encode`: projector-ready feature shards (patch-token grids, AnyRes tiles, video frames).

    from vlmtool.encode import EncodeOptions, run_encode
    run_encode(["shards/"], "feats/", EncodeOptions(pretrained="my-clip/"))

views.py cuts a sample's views, stream.py prepares them in loader workers, job.py runs the tower
and writes the shards, predict.py says beforehand what will be written. The reader, and
`lm_layout`, live in vlmtool.features.
"""

import importlib

_NAMES = {"EncodeOptions": "vlmtool.encode.options", "run_encode": "vlmtool.encode.job", "Tower": "vlmtool.encode.views",
          "lm_layout": "vlmtool.features"}
__all__ = list(_NAMES)


def __getattr__(name: str):
    """Names imported when first used: the options stay light (the CLI reads them), the job brings torch."""
    if name not in _NAMES:
        raise AttributeError(f"module 'vlmtool.encode' has no attribute {name!r}")
    return getattr(importlib.import_module(_NAMES[name]), name)
