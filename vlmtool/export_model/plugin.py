"""lmms-eval's entry point (group `lmms_eval.models`, declared in pyproject.toml): the manifest
that maps `--model vlmtool` to `vlmtool.export_model.lmms.VlmtoolLMMS`. Kept apart from the
class so that lmms-eval can read it while its own model registry is still being built."""

from __future__ import annotations


def manifest():
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="vlmtool", simple_class_path="vlmtool.export_model.lmms.VlmtoolLMMS")
