"""`vlmtool encode`: projector-ready feature shards (patch-token grids, AnyRes tiles, video frames).

    from vlmtool.encode import EncodeOptions, run_encode
    run_encode(["shards/"], "feats/", EncodeOptions(pretrained="my-clip/"))

views.py cuts a sample's views, stream.py prepares them in loader workers, job.py runs the tower
and writes the shards, predict.py says beforehand what will be written. The reader, and
`lm_layout`, live in vlmtool.features.
"""

from vlmtool.encode.job import EncodeOptions, run_encode
from vlmtool.encode.views import Tower
from vlmtool.features import lm_layout

__all__ = ["EncodeOptions", "Tower", "lm_layout", "run_encode"]
