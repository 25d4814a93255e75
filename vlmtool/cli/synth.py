"""`vlmtool synth`: each parameter is named as its SynthOptions field (`--requests-per-s` is
`requests_per_s`), so the options object is built once, by name."""

from __future__ import annotations

import typer

from vlmtool.cli._app import (
    CPUS_PER_WORKER,
    DEVICE,
    EXECUTOR,
    GPUS_PER_WORKER,
    INPUTS,
    JSON,
    MAX_IMAGE_BYTES,
    MAX_PIXELS,
    MAX_TEXT_BYTES,
    OUT,
    PROGRESS,
    RAY_ADDRESS,
    RAY_WORKERS,
    STRICT,
    app,
    emit,
    options,
)


@app.command("synth")
def synth_cmd(
    inputs: list[str] = INPUTS,
    out: str = OUT,
    teacher: str = typer.Option("captions", "--teacher", help="openai (any OpenAI-compatible server), captions (offline, from captions "
                                "and boxes) or local:DIR (a checkpoint vlmtool train wrote, answering in batches of --concurrency)."),
    base_url: str | None = typer.Option(None, "--base-url", metavar="URL",
                                           help="The server's API root, e.g. http://localhost:8000/v1 (vLLM, SGLang, Ollama, ...)."),
    model: str | None = typer.Option(None, "--model", help="The teacher model's name on that server."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Environment variable holding the API key (never logged or written)."),
    tasks: str = typer.Option("conversation,detail,reasoning,negative", "--tasks",
                              help="Tasks for every sample, or weights (conversation=2,negative=1) with --per-sample. Tasks: conversation, "
                              "detail, reasoning, negative, and probes (up to 3 yes and 3 no presence questions, POPE-style)."),
    per_sample: int = typer.Option(1, "--per-sample", min=1, help="With task weights: how many tasks each sample gets."),
    format: str = typer.Option("llava", "--format", help="llava (conversations with from human/gpt) or messages (chat messages)."),
    negatives: str = typer.Option("adversarial", "--negatives",
                                  help="Absent objects to ask about (POPE): adversarial (co-occurring in the data), popular, random."),
    objects_field: str = typer.Option("objects", "--objects-field",
                                      help="The json field listing a sample's objects (labels, or dicts with name/label/shape/category and bbox)."),
    vocabulary: str | None = typer.Option(None, "--vocabulary", metavar="FILE",
                                             help="Object names, one a line: the absent objects negative questions ask about "
                                                  "(default: the labels named in the data; without either, no negative questions)."),
    image_preset: str = typer.Option("gpt-4o", "--image-preset", help="budget preset used to count each image's tokens in the report."),
    prompts: str | None = typer.Option(None, "--prompts", metavar="DIR",
                                          help="A folder of prompt files (system.txt, conversation.txt, ...) overriding the package's."),
    structured: bool = typer.Option(True, "--structured/--no-structured",
                                    help="Ask for JSON through response_format (dropped automatically where the server refuses it)."),
    max_tokens: int = typer.Option(512, "--max-tokens", min=1, help="The most tokens the teacher may write per reply."),
    max_pixels: int = MAX_PIXELS,
    max_image_bytes: int = MAX_IMAGE_BYTES,
    max_text_bytes: int = MAX_TEXT_BYTES,
    max_reply_bytes: int = typer.Option(1 << 20, "--max-reply-bytes", min=1,
                                        help="Drop a teacher reply larger than this many bytes (counted as failed: reply_too_large)."),
    concurrency: int = typer.Option(32, "--concurrency", "-c", min=1, help="Requests in flight (local:DIR: the batch size)."),
    timeout: float = typer.Option(60.0, "--timeout", min=0.1, help="Seconds per request attempt, reply included."),
    max_retries: int = typer.Option(5, "--max-retries", min=0, help="Retries of a request after a 429, 5xx, timeout or dropped connection."),
    backoff: float = typer.Option(0.5, "--backoff", min=0.0, help="Base of the exponential backoff, seconds (full jitter)."),
    requests_per_s: float | None = typer.Option(None, "--requests-per-s", min=0.001, help="Rate limit: requests a second."),
    tokens_per_min: float | None = typer.Option(None, "--tokens-per-min", min=1.0, help="Rate limit: tokens a minute (estimated before sending)."),
    max_failed: float = typer.Option(0.5, "--max-failed", min=0.0, max=1.0,
                                     help="Exit 1 when more than this share of the requests failed (always when all did)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="On a rerun, send the requests that failed every retry again."),
    strict: bool = STRICT,
    as_json: bool = JSON,
    progress: bool = PROGRESS,
    device: str = DEVICE,
    executor: str = EXECUTOR,
    ray_address: str = RAY_ADDRESS,
    ray_workers: int = RAY_WORKERS,
    gpus_per_worker: float = GPUS_PER_WORKER,
    cpus_per_worker: float = CPUS_PER_WORKER,
) -> None:
    """Generate visual instruction pairs with a teacher VLM; every request's result is kept exactly once."""
    from vlmtool.synth.job import SynthOptions, run_synth

    emit(run_synth(inputs, out, options(SynthOptions, locals())), as_json)
