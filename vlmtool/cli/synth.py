"""`vlmtool synth`."""

from __future__ import annotations

from typing import List, Optional

import typer

from vlmtool.cli._app import JSON, MAX_PIXELS, OUT, PROGRESS, STRICT, app, emit


@app.command("synth")
def synth_cmd(
    inputs: List[str] = typer.Argument(..., help="Image-caption shards, usually filter's output (paths, brace patterns, globs, folders, -)."),
    out: str = OUT,
    teacher: str = typer.Option("captions", "--teacher", help="openai (any OpenAI-compatible server) or captions (offline, from captions and boxes)."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="The server's API root, e.g. http://localhost:8000/v1 (vLLM, SGLang, Ollama, ...)."),
    model: Optional[str] = typer.Option(None, "--model", help="The teacher model's name on that server."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Environment variable holding the API key (never logged or written)."),
    tasks: str = typer.Option("conversation,detail,reasoning,negative", "--tasks", help="Tasks for every sample, or weights (conversation=2,negative=1) with --per-sample."),
    per_sample: int = typer.Option(1, "--per-sample", min=1, help="With task weights: how many tasks each sample gets."),
    fmt: str = typer.Option("llava", "--format", help="llava (conversations with from human/gpt) or messages (chat messages)."),
    negatives: str = typer.Option("adversarial", "--negatives", help="Absent objects to ask about: adversarial (co-occurring), popular, random."),
    concurrency: int = typer.Option(32, "--concurrency", "-c", min=1, help="Requests in flight."),
    timeout: float = typer.Option(60.0, "--timeout", min=0.1, help="Seconds per request."),
    max_retries: int = typer.Option(5, "--max-retries", min=0, help="Retries of a failed request (timeouts, 429, 5xx) before it counts as failed."),
    backoff: float = typer.Option(0.5, "--backoff", min=0.0, help="Base of the exponential backoff, seconds (full jitter)."),
    rps: Optional[float] = typer.Option(None, "--requests-per-s", min=0.001, help="Rate limit: requests a second."),
    tpm: Optional[float] = typer.Option(None, "--tokens-per-min", min=1.0, help="Rate limit: tokens a minute (estimated before sending)."),
    structured: bool = typer.Option(True, "--structured/--no-structured", help="Ask for JSON through response_format (dropped automatically where the server refuses it)."),
    max_tokens: int = typer.Option(512, "--max-tokens", min=1, help="Most tokens the teacher may generate per request."),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="A folder of prompt files (system.txt, conversation.txt, ...) overriding the package's."),
    image_preset: str = typer.Option("gpt-4o", "--image-preset", help="budget preset used to count each image's tokens in the report."),
    vocabulary: Optional[str] = typer.Option(None, "--vocabulary", help="A file of object names (one a line) to check answers against, beside the shapes."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="On a rerun, send the requests that failed every retry again."),
    max_pixels: Optional[int] = MAX_PIXELS,
    strict: bool = STRICT,
    as_json: bool = JSON,
    progress: bool = PROGRESS,
) -> None:
    """Generate visual instruction pairs with a teacher VLM; every request's result is kept exactly once."""
    from vlmtool.synth.job import run_synth

    emit(run_synth(inputs, out, teacher=teacher, base_url=base_url, model=model, api_key_env=api_key_env, tasks=tasks,
                   per_sample=per_sample, fmt=fmt, concurrency=concurrency, timeout=timeout, max_retries=max_retries, backoff=backoff,
                   requests_per_s=rps, tokens_per_min=tpm, structured=structured, max_tokens=max_tokens, prompts=prompts,
                   negative_mode=negatives, image_preset=image_preset, vocabulary=vocabulary, retry_failed=retry_failed,
                   strict=strict, max_pixels=max_pixels, progress=progress), as_json)
