"""`vlmtool synth`'s options: one frozen dataclass, built once (by the CLI, or by a caller),
passed whole to `run_synth`, written to the manifest and compared on resume. The CLI's
parameters carry the same names (`--requests-per-s` is `requests_per_s`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from vlmtool.core.executors import ExecutorOptions
from vlmtool.core.job import free
from vlmtool.core.records import MiB
from vlmtool.core.samples import DEFAULT_MAX_PIXELS
from vlmtool.errors import UsageError

FORMATS = ("llava", "messages")
NEGATIVE_MODES = ("adversarial", "popular", "random")
TEACHERS = ("captions", "openai")


@dataclass(frozen=True)
class SynthOptions(ExecutorOptions):
    """See `vlmtool synth --help`. The free() ones may change when a job is resumed."""

    teacher: str = "captions"
    base_url: str | None = free(None)  # another server of the same model may finish the job
    model: str | None = None
    tasks: str = "conversation,detail,reasoning,negative"
    per_sample: int = 1
    format: str = "llava"
    negatives: str = "adversarial"
    objects_field: str = "objects"
    vocabulary: str | None = None
    image_preset: str = "gpt-4o"
    prompts: str | None = None
    structured: bool = True
    max_tokens: int = 512
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_image_bytes: int = 64 * MiB
    max_text_bytes: int = 1 * MiB
    max_reply_bytes: int = free(1 * MiB)
    api_key_env: str = free("OPENAI_API_KEY")
    concurrency: int = free(32)
    timeout: float = free(60.0)
    max_retries: int = free(5)
    backoff: float = free(0.5)
    requests_per_s: float | None = free(None)
    tokens_per_min: float | None = free(None)
    max_failed: float = free(0.5)
    retry_failed: bool = free(False)
    strict: bool = free(False)
    progress: bool = free(True)
    device: str = free("auto")  # --teacher local:DIR runs the checkpoint here

    def check(self) -> None:
        """UsageError (one line, exit 2) for any option that cannot work, before anything is written."""
        if self.teacher.startswith("local:"):
            _check_local(self.teacher[len("local:"):])
        else:
            _one_of("--teacher", self.teacher, TEACHERS + ("local:DIR",))
        _one_of("--format", self.format, FORMATS)
        _one_of("--negatives", self.negatives, NEGATIVE_MODES)
        if self.teacher == "openai" and (not self.base_url or not self.model):
            raise UsageError("--teacher openai needs --base-url (e.g. http://localhost:8000/v1) and --model")
        for name in ("per_sample", "concurrency", "max_tokens", "max_pixels", "max_image_bytes", "max_text_bytes", "max_reply_bytes"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        if not (0.0 <= self.max_failed <= 1.0):  # also refuses nan
            raise UsageError(f"--max-failed is a share of the requests, from 0 to 1 (got {self.max_failed})")
        for name in ("timeout", "backoff", "requests_per_s", "tokens_per_min"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0 and (v > 0 or name == "backoff")):
                raise UsageError(f"--{name.replace('_', '-')} must be a positive number (got {v})")
        if self.max_retries < 0:
            raise UsageError("--max-retries must be 0 or more")
        if not self.objects_field.strip():
            raise UsageError("--objects-field names the json field that lists a sample's objects (default: objects)")
        _check_preset(self.image_preset)


def _check_local(folder: str) -> None:
    from pathlib import Path

    if not folder or not (Path(folder) / "checkpoint.json").is_file():
        raise UsageError(f"--teacher local:{folder}: not a checkpoint folder (vlmtool train writes one, with checkpoint.json)")


def _one_of(option: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"{option} {value!r}: use one of {', '.join(allowed)}")


def _check_preset(preset: str) -> None:
    from vlmtool import budget

    try:
        budget.image_tokens(preset, 336, 336)
    except UsageError as e:
        raise UsageError(f"--image-preset: {e}") from None
