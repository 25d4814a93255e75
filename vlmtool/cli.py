"""The vlmtool command line: one small function per subcommand, each calling one job.

stdout carries data only (the --json summary, JSONL rows, the table a command was asked for);
bars and logs go to stderr. A user error prints one line and exits 2 (usage) or 1 (job failed).
Heavy modules (torch, open_clip, av) are imported inside the commands that use them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from vlmtool import __version__
from vlmtool.errors import UsageError, VlmtoolError

app = typer.Typer(
    name="vlmtool",
    help="Data tooling for vision-language models: shapes world, shard inspection, CLIP filtering, "
    "instruction synthesis and visual-token budgets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Options shared by the shard jobs.
OUT = typer.Option(..., "--out", "-o", help="Output folder; rerunning with the same folder resumes.")
WORKERS = typer.Option(2, "--workers", "-w", min=0, help="Loader worker processes (0: read in the main process).")
STRICT = typer.Option(False, "--strict", help="Stop at the first bad sample instead of counting and skipping it.")
JSON = typer.Option(False, "--json", help="Print the summary as one JSON object on stdout.")
PROGRESS = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on stderr.")
MAX_PIXELS = typer.Option(None, "--max-pixels", min=1, help="Reject images with more pixels (default: PIL's bomb limit, 89,478,485).")


def emit(summary: dict, as_json: bool) -> None:
    """The job summary: JSON on stdout for pipelines, or readable lines on stderr for people."""
    if as_json:
        from vlmtool.core.shards import dumps

        sys.stdout.buffer.write(dumps(summary) + b"\n")
        sys.stdout.flush()
        return

    def lines(obj, indent=0):
        for k, v in obj.items():
            if isinstance(v, dict) and v and not all(isinstance(x, (int, float, str, type(None))) for x in v.values()):
                yield " " * indent + f"{k}:"
                yield from lines(v, indent + 2)
            elif isinstance(v, dict):
                yield " " * indent + f"{k}: " + (", ".join(f"{a}={b}" for a, b in v.items()) or "-")
            else:
                yield " " * indent + f"{k}: {v}"

    for line in lines(summary):
        print(line, file=sys.stderr)


def _version(value: bool) -> None:
    if value:
        print(f"vlmtool {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    pass


@app.command("world")
def world_cmd(
    out: str = typer.Argument(..., help="Folder to write the shards (00000.tar, ...), videos/ and world.json into."),
    samples: int = typer.Option(64, "--samples", "-n", min=1, help="Number of image-caption samples."),
    shard_size: int = typer.Option(16, "--shard-size", min=1, help="Samples per shard."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same bytes."),
    mismatch: float = typer.Option(0.0, "--mismatch", min=0.0, max=1.0, help="Fraction of samples given another scene's caption."),
    broken: float = typer.Option(0.0, "--broken", min=0.0, max=1.0, help="Fraction of broken samples (every kind the core rejects)."),
    broken_tar: bool = typer.Option(False, "--broken-tar", help="Truncate the last shard mid-file."),
    videos: int = typer.Option(0, "--videos", min=0, help="Short videos with known static and moving segments."),
    sizes: str = typer.Option("varied", "--sizes", help="Image size mix: varied (96 px to 1920x1080, tall, wide) or small (64-160 px)."),
    as_json: bool = JSON,
    progress: bool = PROGRESS,
) -> None:
    """Generate the synthetic shapes world (images, captions, objects, videos, faults)."""
    from vlmtool.world import make_world

    emit(make_world(out, samples, shard_size, seed, mismatch, broken, broken_tar, videos, sizes, progress), as_json)


@app.command("inspect")
def inspect_cmd(
    inputs: List[str] = typer.Argument(..., help="Shards: paths, brace patterns ('d/{00000..00009}.tar'), globs, folders, or - for a list on stdin."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Job folder, for resume and manifest.json (default: a throwaway folder)."),
    workers: int = WORKERS,
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1),
    strict: bool = STRICT,
    max_pixels: Optional[int] = MAX_PIXELS,
    as_json: bool = JSON,
    progress: bool = PROGRESS,
) -> None:
    """Count samples, fields, image sizes, caption lengths and broken samples by reason."""
    from vlmtool.inspect_shards import run_inspect

    emit(run_inspect(inputs, out, workers=workers, batch_size=batch_size, strict=strict, max_pixels=max_pixels, progress=progress), as_json)


def _parse_size(text: str) -> tuple[int, int]:
    w, sep, h = text.lower().partition("x")
    try:
        width, height = int(w), int(h)
    except ValueError:
        raise UsageError(f"--size {text!r}: write it as WIDTHxHEIGHT, e.g. 1920x1080") from None
    if not sep or width <= 0 or height <= 0:
        raise UsageError(f"--size {text!r}: width and height must be positive integers (WIDTHxHEIGHT)")
    return width, height


def _table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) if i and c.replace(".", "").isdigit() else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                     for r in cells)


@app.command("budget")
def budget_cmd(
    inputs: Optional[List[str]] = typer.Argument(None, help="Images, folders, webdataset shards, videos, or - for paths on stdin. Leave out with --size."),
    size: Optional[List[str]] = typer.Option(None, "--size", "-s", help="An image size WIDTHxHEIGHT, no file needed (repeatable)."),
    model: str = typer.Option("llava-1.5", "--model", "-m", help="Preset(s), comma-separated: llava-1.5, llava-next, llava-onevision, qwen2-vl, qwen2.5-vl, internvl2.5, idefics3, smolvlm, smolvlm-256m, gemma3, gpt-4o, gpt-4o-mini, gpt-4.1-mini, claude, gemini, custom."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="A preset option KEY=VALUE, e.g. max_pixels=1003520, max_tiles=6, detail=low, grid_pinpoints=336x672,672x336 (repeatable)."),
    frames: Optional[int] = typer.Option(None, "--frames", min=0, help="Video: tokens for this many frames at --size (or of the video)."),
    context: Optional[int] = typer.Option(None, "--context", min=1, help="Video: context budget B in tokens; plans f_max = floor((B - reserved) / P) frames."),
    reserved: int = typer.Option(0, "--reserved", min=0, help="Video: tokens of B kept for text."),
    duration: Optional[float] = typer.Option(None, "--duration", min=0.0, help="Video given by numbers: seconds (with --size and --fps)."),
    video_fps: Optional[float] = typer.Option(None, "--fps", min=0.0, help="Video given by numbers: frame rate."),
    select: str = typer.Option("uniform", "--select", help="Which frames: uniform, fps (cap at --sample-fps), content (where the picture changes)."),
    sample_fps: Optional[float] = typer.Option(None, "--sample-fps", min=0.0, help="With --select fps: at most this many frames a second."),
    temporal_pool: int = typer.Option(1, "--temporal-pool", min=1, help="Video: merge k consecutive frames into one."),
    draw: Optional[str] = typer.Option(None, "--draw", help="Write a PNG of the tiles over the image (one image or size, one model)."),
    kv_layers: Optional[int] = typer.Option(None, "--kv-layers", min=1, help="KV cache: LLM layers (with --kv-heads, --head-dim)."),
    kv_heads: Optional[int] = typer.Option(None, "--kv-heads", min=1, help="KV cache: key/value heads."),
    head_dim: Optional[int] = typer.Option(None, "--head-dim", min=1, help="KV cache: head dimension."),
    kv_dtype: str = typer.Option("bf16", "--kv-dtype", help="KV cache dtype: fp32, bf16, fp16, fp8, int8, int4."),
    price: Optional[float] = typer.Option(None, "--price-per-mtok", min=0.0, help="Price in your currency per million input tokens."),
    rows: bool = typer.Option(False, "--rows", help="Datasets: one JSON line per image and model on stdout instead of the summary."),
    as_json: bool = typer.Option(False, "--json", help="Machine output: JSON lines (one per size and model), or one summary object for datasets."),
    progress: bool = PROGRESS,
) -> None:
    """Exact visual-token counts per model, AnyRes tiling plans and video frame budgets."""
    from vlmtool.budget import PRESETS, image_plan, parse_options, video_tokens
    from vlmtool.core.shards import dumps

    presets = [m.strip() for m in model.split(",") if m.strip()]
    for m in presets:
        if m not in PRESETS:
            raise UsageError(f"unknown model preset {m!r}; known presets: {', '.join(PRESETS)}")
    pairs = list(set_ or [])
    from vlmtool.budget import preset_options

    for pair in pairs:
        key = pair.partition("=")[0].strip().replace("-", "_")
        if not any(key in preset_options(m) for m in presets):
            raise UsageError(f"--set {pair!r}: none of {', '.join(presets)} has an option {key!r}")
    opts = {m: parse_options(m, pairs) for m in presets}
    if temporal_pool > 1:
        for m in presets:
            opts[m]["temporal_pool"] = temporal_pool
    img_opts = {m: {k: v for k, v in o.items() if k != "temporal_pool"} for m, o in opts.items()}

    def kv_and_price(tokens: int) -> dict:
        extra = {}
        if kv_layers and kv_heads and head_dim:
            from vlmtool.budget.dataset import kv_cache_bytes

            extra["kv_bytes"] = kv_cache_bytes(tokens, kv_layers, kv_heads, head_dim, kv_dtype)
        elif any(v is not None for v in (kv_layers, kv_heads, head_dim)):
            raise UsageError("the KV cache needs all of --kv-layers, --kv-heads and --head-dim")
        if price is not None:
            extra["price"] = round(tokens / 1e6 * price, 6)
        return extra

    out = sys.stdout.buffer
    inputs = list(inputs or [])
    sizes = [_parse_size(s) for s in (size or [])]
    if not inputs and not sizes:
        raise UsageError("give image/video/shard inputs, or --size WIDTHxHEIGHT for a quick estimate")
    from vlmtool.budget.dataset import split_inputs

    videos, images = split_inputs(inputs)
    video_mode = bool(videos) or context is not None or frames is not None or duration is not None

    # ---- video: from files, or from numbers (--size with --duration/--fps, or --frames)
    if video_mode:
        from vlmtool.budget.video import VideoInfo, plan_video, probe

        infos = [probe(v) for v in videos]
        for w, h in sizes:
            if duration is None and frames is None:
                raise UsageError("a video given by numbers needs --duration and --fps, or --frames")
            fps_ = video_fps or (frames / duration if frames and duration else 1.0)
            dur = duration if duration is not None else (frames or 0) / fps_
            infos.append(VideoInfo(None, w, h, fps_, int(frames if frames is not None else round(dur * fps_)), dur))
        if images and not infos:
            raise UsageError("--context/--frames/--duration plan videos: give a video file or --size")
        results = []
        for info in infos:
            for m in presets:
                if context is None:
                    n = frames if frames is not None else info.frames
                    r = {**info.to_json(), "model": m, "frames_counted": n, "temporal_pool": temporal_pool,
                         "tokens": video_tokens(m, n, info.width, info.height, **opts[m])}
                else:
                    r = plan_video(m, info, context, reserved, select, sample_fps, frames, **opts[m])
                results.append({**r, **kv_and_price(r["tokens"])})
        if as_json:
            for r in results:
                out.write(dumps(r) + b"\n")
        else:
            trows = [[r.get("video") or f"{r['width']}x{r['height']}", r["model"], r.get("tokens_per_frame", ""), r.get("f_max", ""),
                      r.get("selected", r.get("frames_counted")), r["tokens"]] for r in results]
            print(_table(trows, ["video", "model", "P/frame", "f_max", "frames", "tokens"]))
            for r in results:
                if r.get("timestamps"):
                    print(f"{r.get('video') or 'video'} {r['model']} {r['strategy']}: " + " ".join(f"{t:g}" for t in r["timestamps"]))
        return

    # ---- quick estimates and single-image plans
    one_image = len(images) == 1 and images[0] != "-" and not images[0].lower().endswith(".tar") and not Path(images[0]).is_dir()
    if sizes or one_image:
        from vlmtool.budget.dataset import header_size

        targets = [(f"{w}x{h}", w, h, None) for w, h in sizes]
        for path in images:
            try:
                with open(path, "rb") as f:
                    w, h = header_size(f)
            except (OSError, ValueError) as e:
                raise VlmtoolError(f"{path}: cannot read image header ({e})") from None
            targets.append((path, w, h, path))
        plans = [(label, src, image_plan(m, w, h, **img_opts[m])) for label, w, h, src in targets for m in presets]
        if draw:
            if len(plans) != 1:
                raise UsageError("--draw needs exactly one image or size and one model")
            from vlmtool.budget.dataset import draw_plan

            print(f"wrote {draw_plan(plans[0][2], draw, plans[0][1])}", file=sys.stderr)
        if as_json:
            for label, _, plan in plans:
                out.write(dumps({"source": label, **plan.to_json(), **kv_and_price(plan.tokens)}) + b"\n")
            return
        trows = []
        for label, _, plan in plans:
            extra = kv_and_price(plan.tokens)
            trows.append([label, plan.preset, plan.tokens, plan.wrapper_tokens, "x".join(map(str, plan.grid)) if plan.grid else "",
                          "x".join(map(str, plan.resized)) if plan.resized else "", *(extra.values())])
        print(_table(trows, ["image", "model", "tokens", "wrappers", "grid", "resized", *kv_and_price(0).keys()]))
        if len(plans) == 1 and len(plans[0][2].parts) > 1:
            plan = plans[0][2]
            print()
            print(_table([[p.name, ",".join(map(str, p.grid)) if p.grid else "", ",".join(map(str, p.box)) if p.box else "", p.tokens] for p in plan.parts]
                         + [["total", "", "", plan.tokens]], ["part", "row,col", "box (x0,y0,x1,y1)", "tokens"]))
            if plan.note:
                print(plan.note)
        return

    # ---- datasets
    from vlmtool.budget.dataset import budget_dataset

    summary = budget_dataset(images, presets, img_opts, rows_out=out if rows else None, progress=progress)
    for m, st in summary["models"].items():
        st.update(kv_and_price(st["total"]))
    if rows:
        return
    if as_json:
        out.write(dumps(summary) + b"\n")
        return
    trows = [[m, st["images"], st["total"], st.get("mean"), st.get("p50"), st.get("p95"), st.get("max"), st["errors"],
              *[v for k, v in st.items() if k in ("kv_bytes", "price")]] for m, st in summary["models"].items()]
    extra_cols = [k for k in ("kv_bytes", "price") if k in next(iter(summary["models"].values()))]
    print(_table(trows, ["model", "images", "total", "mean", "p50", "p95", "max", "errors", *extra_cols]))
    for m, st in summary["models"].items():
        if st.get("histogram"):
            print(f"{m}: " + ", ".join(f"{k}: {v}" for k, v in st["histogram"].items()))
    for e in summary["errors"][:10]:
        print(f"error: {e['source']}: {e['error']}", file=sys.stderr)


DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda or mps (auto: cuda when there is one).")
PRECISION = typer.Option("auto", "--precision", help="auto, fp32, bf16 or fp16 (auto: bf16 on a CUDA device that has it, else fp32).")


@app.command("clip-train")
def clip_train_cmd(
    inputs: List[str] = typer.Argument(..., help="Training shards (paths, brace patterns, globs, folders, -)."),
    out: str = OUT,
    model: str = typer.Option("tiny-clip", "--model", help="open_clip architecture (e.g. tiny-clip, ViT-B-32)."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="Start from a tag, a checkpoint file or a clip-train folder (fine-tuning)."),
    steps: int = typer.Option(600, "--steps", min=1),
    batch_size: int = typer.Option(128, "--batch-size", "-b", min=2, help="Per rank; negatives are gathered from all ranks."),
    lr: float = typer.Option(1e-3, "--lr", min=0.0),
    weight_decay: float = typer.Option(0.1, "--weight-decay", min=0.0),
    warmup: int = typer.Option(50, "--warmup", min=0),
    workers: int = typer.Option(1, "--workers", "-w", min=0),
    save_every: int = typer.Option(200, "--save-every", min=1),
    time_limit: Optional[float] = typer.Option(None, "--time-limit", min=1.0, help="Stop (and save) after this many seconds."),
    seed: int = typer.Option(0, "--seed"),
    device: str = DEVICE,
    precision: str = PRECISION,
    as_json: bool = JSON,
    progress: bool = PROGRESS,
) -> None:
    """Train or fine-tune a CLIP with the symmetric InfoNCE loss (DDP under torchrun); rerun to resume."""
    from vlmtool.clip.train import run_clip_train

    emit(run_clip_train(inputs, out, model=model, pretrained=pretrained, steps=steps, batch_size=batch_size, lr=lr,
                        weight_decay=weight_decay, warmup=warmup, workers=workers, device=device, precision=precision, seed=seed,
                        save_every=save_every, time_limit=time_limit, progress=progress), as_json)


@app.command("filter")
def filter_cmd(
    inputs: List[str] = typer.Argument(..., help="Image-caption shards (paths, brace patterns, globs, folders, -)."),
    out: str = OUT,
    model: Optional[str] = typer.Option(None, "--model", help="open_clip architecture, e.g. ViT-B-32 (not needed with a clip-train folder)."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="A pretrained tag (e.g. openai), a checkpoint file, or a clip-train folder."),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="Keep pairs with cosine similarity >= X (LAION used 0.28 with ViT-B/32)."),
    keep_fraction: Optional[float] = typer.Option(None, "--keep-fraction", help="Keep the global top fraction F of valid pairs, over all shards and ranks."),
    batch_size: int = typer.Option(256, "--batch-size", "-b", min=1),
    workers: int = WORKERS,
    preprocess: str = typer.Option("fast", "--preprocess", help="fast (JPEG draft decode, one resize, uint8 normalized on the device) or exact (open_clip's transform)."),
    min_side: int = typer.Option(0, "--min-side", min=0, help="Pre-filter: reject images whose shorter side is below this."),
    max_aspect: float = typer.Option(0.0, "--max-aspect", min=0.0, help="Pre-filter: reject images more elongated than this ratio (0: off)."),
    min_words: int = typer.Option(0, "--min-words", min=0, help="Pre-filter: reject captions with fewer words."),
    min_chars: int = typer.Option(0, "--min-chars", min=0, help="Pre-filter: reject captions with fewer characters."),
    max_pixels: Optional[int] = MAX_PIXELS,
    plot: bool = typer.Option(False, "--plot", help="Also draw the score histogram to OUT/report.png."),
    device: str = DEVICE,
    precision: str = PRECISION,
    strict: bool = STRICT,
    wait_timeout: Optional[float] = typer.Option(None, "--wait-timeout", help="Seconds to wait for other ranks' scores before giving up."),
    as_json: bool = JSON,
    progress: bool = PROGRESS,
) -> None:
    """Score image-caption pairs with CLIP and keep those that match (threshold or global top fraction)."""
    from vlmtool.filter import run_filter

    summary = run_filter(inputs, out, model=model, pretrained=pretrained, min_score=min_score, keep_fraction=keep_fraction,
                         batch_size=batch_size, workers=workers, device=device, precision=precision, preprocess=preprocess,
                         min_side=min_side, max_aspect=max_aspect, min_words=min_words, min_chars=min_chars, strict=strict,
                         max_pixels=max_pixels, plot=plot, wait_timeout=wait_timeout, progress=progress)
    emit(summary, as_json)
    report = Path(out) / "report.txt"
    if not as_json and summary.get("complete") and report.exists():
        print("score histogram:\n" + report.read_text(), file=sys.stderr)


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
    max_retries: int = typer.Option(5, "--max-retries", min=0),
    backoff: float = typer.Option(0.5, "--backoff", min=0.0, help="Base of the exponential backoff, seconds (full jitter)."),
    rps: Optional[float] = typer.Option(None, "--requests-per-s", min=0.001, help="Rate limit: requests a second."),
    tpm: Optional[float] = typer.Option(None, "--tokens-per-min", min=1.0, help="Rate limit: tokens a minute (estimated before sending)."),
    structured: bool = typer.Option(True, "--structured/--no-structured", help="Ask for JSON through response_format (dropped automatically where the server refuses it)."),
    max_tokens: int = typer.Option(512, "--max-tokens", min=1),
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


@app.command("demo")
def demo_cmd(
    out: str = typer.Option("vlmtool-demo", "--out", "-o", help="Folder for the demo's world and job outputs."),
    samples: int = typer.Option(256, "--samples", "-n", min=16, help="Size of the shapes world."),
    as_json: bool = JSON,
    progress: bool = PROGRESS,
) -> None:
    """Run the pipeline on the bundled shapes world: make it, inspect it, and the jobs after."""
    from vlmtool.demo import run_demo

    emit(run_demo(out, samples=samples, progress=progress), as_json)


def main() -> None:
    try:
        app(prog_name="vlmtool")
    except VlmtoolError as e:
        print(f"vlmtool: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except BrokenPipeError:  # `vlmtool ... | head`
        sys.stderr.close()
        sys.exit(0)


__all__ = ["app", "main", "UsageError"]
