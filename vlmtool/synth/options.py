"""`vlmtool synth`'s options: one frozen dataclass, built once (by the CLI, or by a caller),
passed whole to `run_synth`, written to the manifest and compared on resume. Each field carries
its default and its command-line form (core/options.py), so the CLI builds its parameters from it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from vlmtool.core.executors import ExecutorOptions
from vlmtool.core.options import DEVICE, MAX_IMAGE_BYTES, MAX_PIXELS, MAX_TEXT_BYTES, PROGRESS, STRICT, MiB, option
from vlmtool.errors import UsageError

FORMATS = ("llava", "messages")
NEGATIVE_MODES = ("adversarial", "popular", "random")
BALANCE_MODES = ("none", "present", "all")
TEACHERS = ("captions", "openai")


@dataclass(frozen=True)
class SynthOptions(ExecutorOptions):
    """See `vlmtool synth --help`. The free ones may change when a job is resumed."""

    teacher: str = option("captions", "openai (any OpenAI-compatible server), captions (offline, from captions and boxes) or "
                          "local:DIR (a checkpoint vlmtool train wrote, answering in batches of --concurrency).")
    base_url: str | None = option(None, "The server's API root, e.g. http://localhost:8000/v1 (vLLM, SGLang, Ollama, ...).",
                                  metavar="URL", free=True)  # another server of the same model may finish the job
    model: str | None = option(None, "The teacher model's name on that server.")
    tasks: str = option("conversation,detail,reasoning,negative", "Tasks for every sample, or weights (conversation=2,negative=1) "
                        "with --per-sample. Tasks: conversation, detail, reasoning, negative, and probes (up to 3 yes and 3 no "
                        "presence questions, POPE-style).")
    per_sample: int = option(1, "With task weights: how many tasks each sample gets.", min=1)
    format: str = option("llava", "llava (conversations with from human/gpt) or messages (chat messages).")
    negatives: str = option("adversarial", "Absent objects to ask about (POPE): adversarial (co-occurring in the data), popular, random.")
    balance: str = option("none", "Balance each object's yes and no answers (within a shard) so the question alone tells "
                          "nothing: none (POPE's draw, which asks most about frequent objects, with noes), present (of the "
                          "objects that are there, those whose noes lead are asked; negatives stay POPE's draw) or all (and "
                          "each negative is drawn, within --negatives' kind, where that object's yeses lead).")
    objects_field: str = option("objects", "The json field listing a sample's objects (labels, or dicts with "
                                "name/label/shape/category and bbox).")
    vocabulary: str | None = option(None, "Object names, one a line: the absent objects negative questions ask about (default: the "
                                    "labels named in the data; without either, no negative questions).", metavar="FILE")
    image_preset: str = option("gpt-4o", "budget preset used to count each image's tokens in the report.")
    prompts: str | None = option(None, "A folder of prompt files (system.txt, conversation.txt, ...) overriding the package's.",
                                 metavar="DIR")
    structured: bool = option(True, "Ask for JSON through response_format (dropped automatically where the server refuses it).",
                              flags=("--structured/--no-structured",))
    max_tokens: int = option(512, "The most tokens the teacher may write per reply.", min=1)
    max_pixels: int = MAX_PIXELS()
    max_image_bytes: int = MAX_IMAGE_BYTES()
    max_text_bytes: int = MAX_TEXT_BYTES()
    max_reply_bytes: int = option(1 * MiB, "Drop a teacher reply larger than this many bytes (counted as failed: reply_too_large).",
                                  min=1, free=True)
    api_key_env: str = option("OPENAI_API_KEY", "Environment variable holding the API key (never logged or written).", free=True)
    concurrency: int = option(32, "Requests in flight (local:DIR: the batch size).", flags=("--concurrency", "-c"), min=1, free=True)
    timeout: float = option(60.0, "Seconds per request attempt, reply included.", min=0.1, free=True)
    max_retries: int = option(5, "Retries of a request after a 429, 5xx, timeout or dropped connection.", min=0, free=True)
    backoff: float = option(0.5, "Base of the exponential backoff, seconds (full jitter).", min=0.0, free=True)
    requests_per_s: float | None = option(None, "Rate limit: requests a second.", min=0.001, free=True)
    tokens_per_min: float | None = option(None, "Rate limit: tokens a minute (estimated before sending).", min=1.0, free=True)
    max_failed: float = option(0.5, "Exit 1 when more than this share of the requests failed (always when all did).", min=0.0,
                               max=1.0, free=True)
    retry_failed: bool = option(False, "On a rerun, send the requests that failed every retry again.", free=True)
    strict: bool = STRICT()
    progress: bool = PROGRESS()
    device: str = DEVICE()  # --teacher local:DIR runs the checkpoint here

    def check(self) -> None:
        """UsageError (one line, exit 2) for any option that cannot work, before anything is written."""
        if self.teacher.startswith("local:"):
            _check_local(self.teacher[len("local:"):])
        else:
            _one_of("--teacher", self.teacher, TEACHERS + ("local:DIR",))
        _one_of("--format", self.format, FORMATS)
        _one_of("--negatives", self.negatives, NEGATIVE_MODES)
        _one_of("--balance", self.balance, BALANCE_MODES)
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
