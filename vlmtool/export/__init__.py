"""Instructions -> the layouts trainers read: LLaVA's JSON list and image folder, Hugging Face
datasets Parquet, LLaMA-Factory's sharegpt, webdataset shards (see docs/formats.md).

    from vlmtool.export import ExportOptions, run_export
    run_export("instruct/instructions.jsonl", ["kept/shards"], "out/", ExportOptions(to="hf"))
"""

from vlmtool.export.data import FORMATS
from vlmtool.export.job import ExportOptions, run_export

__all__ = ["FORMATS", "ExportOptions", "run_export"]
