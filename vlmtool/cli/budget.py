"""`vlmtool budget`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from vlmtool.cli._app import PROGRESS, app
from vlmtool.errors import UsageError, VlmtoolError


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
