"""`vlmtool synth`: every option's default and help come from SynthOptions' fields."""

from __future__ import annotations

from vlmtool.cli._app import INPUTS, JSON, OUT, app, emit, options, param
from vlmtool.synth.options import SynthOptions as S


@app.command("synth")
def synth_cmd(
    inputs: list[str] = INPUTS,
    out: str = OUT,
    teacher: str = param(S, "teacher"),
    base_url: str | None = param(S, "base_url"),
    model: str | None = param(S, "model"),
    api_key_env: str = param(S, "api_key_env"),
    tasks: str = param(S, "tasks"),
    per_sample: int = param(S, "per_sample"),
    format: str = param(S, "format"),
    negatives: str = param(S, "negatives"),
    balance: str = param(S, "balance"),
    objects_field: str = param(S, "objects_field"),
    vocabulary: str | None = param(S, "vocabulary"),
    image_preset: str = param(S, "image_preset"),
    prompts: str | None = param(S, "prompts"),
    structured: bool = param(S, "structured"),
    max_tokens: int = param(S, "max_tokens"),
    max_pixels: int = param(S, "max_pixels"),
    max_image_bytes: int = param(S, "max_image_bytes"),
    max_text_bytes: int = param(S, "max_text_bytes"),
    max_reply_bytes: int = param(S, "max_reply_bytes"),
    concurrency: int = param(S, "concurrency"),
    timeout: float = param(S, "timeout"),
    max_retries: int = param(S, "max_retries"),
    backoff: float = param(S, "backoff"),
    requests_per_s: float | None = param(S, "requests_per_s"),
    tokens_per_min: float | None = param(S, "tokens_per_min"),
    max_failed: float = param(S, "max_failed"),
    retry_failed: bool = param(S, "retry_failed"),
    strict: bool = param(S, "strict"),
    as_json: bool = JSON,
    progress: bool = param(S, "progress"),
    device: str = param(S, "device"),
    executor: str = param(S, "executor"),
    ray_address: str = param(S, "ray_address"),
    ray_workers: int = param(S, "ray_workers"),
    gpus_per_worker: float = param(S, "gpus_per_worker"),
    cpus_per_worker: float = param(S, "cpus_per_worker"),
) -> None:
    """Generate visual instruction pairs with a teacher VLM; every request's result is kept exactly once."""
    from vlmtool.synth.job import run_synth

    emit(run_synth(inputs, out, options(S, locals())), as_json)
