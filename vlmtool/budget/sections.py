"""The sections of a budget report: image plans, a dataset summary, videos, audio, the preset list.

Each section is `fn(opts, models, out, result)`: it writes JSON lines (--json) or a table to
`out`, and adds log lines or an input failure to `result`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import BinaryIO

from vlmtool.budget import PRESETS, image_plan, video_tokens
from vlmtool.budget.registry import unknown
from vlmtool.budget.report import STRATEGIES, BudgetOptions, Result, extras, settings, table
from vlmtool.errors import JobFailed, UsageError


def _write(out: BinaryIO, obj) -> None:
    from vlmtool.core.shards import dumps

    out.write((dumps(obj) if not isinstance(obj, str) else obj.encode()) + b"\n")


def parse_size(text: str) -> tuple[int, int]:
    w, sep, h = text.lower().partition("x")
    try:
        width, height = int(w), int(h)
    except ValueError:
        raise UsageError(f"--size {text!r}: write it as WIDTHxHEIGHT, e.g. 1920x1080") from None
    if not sep or width <= 0 or height <= 0:
        raise UsageError(f"--size {text!r}: width and height must be positive integers (WIDTHxHEIGHT)")
    if width > 2**31 - 1 or height > 2**31 - 1:
        raise UsageError(f"--size {text!r}: a side may be at most 2^31-1 pixels")
    return width, height


@dataclass
class Inputs:
    sizes: list[tuple[int, int]] = field(default_factory=list)
    image_files: list[str] = field(default_factory=list)  # one image named alone: planned like a --size
    dataset: list[str] = field(default_factory=list)  # shards, folders' images, several images
    videos: list[str] = field(default_factory=list)
    audio: list[str] = field(default_factory=list)
    video_numbers: bool = False  # --size gives video frames (with --duration/--frames/--context/--fps)

    @classmethod
    def gather(cls, opts: BudgetOptions) -> Inputs:
        from vlmtool.budget.dataset import IMAGE_SUFFIXES, INPUT_SUFFIXES, split_inputs
        from vlmtool.core.shards import expand_inputs

        got = cls(sizes=[parse_size(s) for s in opts.size])
        got.video_numbers = any(v is not None for v in (opts.frames, opts.duration, opts.context, opts.fps))
        if opts.inputs:
            got.videos, got.audio, rest = split_inputs(expand_inputs(opts.inputs, suffixes=INPUT_SUFFIXES))
            if len(rest) == 1 and rest[0] in opts.inputs and rest[0].lower().endswith(IMAGE_SUFFIXES):  # one image, named
                got.image_files = rest
            else:
                got.dataset = rest
        if not (opts.inputs or got.sizes or opts.seconds is not None):
            raise UsageError("give image/video/audio/shard inputs, --size WIDTHxHEIGHT for a quick estimate, or --seconds S for audio")
        if got.video_numbers and got.sizes and opts.duration is None and opts.frames is None:
            raise UsageError("a video given by numbers needs --duration and --fps, or --frames")
        if got.video_numbers and not (got.videos or got.sizes):
            raise UsageError("--context/--frames/--duration/--fps plan videos: give a video file, or --size for a video by numbers")
        return got

    def sections(self, opts: BudgetOptions, models: list[str]) -> list:
        image_targets = [] if self.video_numbers else [(f"{w}x{h}", w, h, None) for w, h in self.sizes]
        out = []
        if image_targets or self.image_files:
            out.append(partial(image_section, targets=image_targets, files=self.image_files))
        if self.dataset:
            out.append(partial(dataset_section, paths=self.dataset))
        has = {mod: any(mod in PRESETS[m].modalities for m in models) for mod in ("video", "audio")}
        if (self.videos or self.video_numbers) and (has["video"] or not has["audio"]):
            out.append(partial(video_section, paths=self.videos, sizes=self.sizes if self.video_numbers else []))
        soundtracks = self.videos if has["audio"] else []  # a video's sound, for the presets that hear it
        if self.audio or opts.seconds is not None or soundtracks:
            out.append(partial(audio_section, paths=self.audio, soundtracks=soundtracks))
        single = len(image_targets) + len(self.image_files) == 1 and len(out) == 1 and len(models) == 1
        if opts.draw and not (single and not self.dataset):
            raise UsageError("--draw needs exactly one image (or one --size) and one model, and nothing else to budget")
        return out


def _readable(probe, paths: list[str], result: Result) -> list:
    """(path, probe(path)) of each path that can be read; the others are failures (exit 1), not a stop."""
    got = []
    for p in paths:
        try:
            got.append((p, probe(p)))
        except UsageError as e:
            result.failures.append(str(e))
    return got


def _for(models: list[str], modality: str) -> list[str]:
    have = [m for m in models if modality in PRESETS[m].modalities]
    if not have:
        raise UsageError(f"none of {', '.join(models)} has a {modality} rule; presets with one: "
                         + ", ".join(p.name for p in PRESETS.values() if modality in p.modalities))
    return have


def image_section(opts: BudgetOptions, models: list[str], out: BinaryIO, result: Result, targets: list, files: list[str]) -> None:
    from vlmtool.budget.dataset import read_image

    targets = list(targets)
    for path in files:
        item = read_image(path, opts.max_image_pixels)
        if item.error:
            raise JobFailed(f"{path}: {item.error}")
        targets.append((path, item.width, item.height, path))
    models = _for(models, "image")
    st = settings(opts, models, "image")
    plans = [(label, src, image_plan(m, w, h, **st[m])) for label, w, h, src in targets for m in models]
    if opts.draw:
        _draw(opts, *plans[0][1:], result)
    if opts.json:
        for label, _, plan in plans:
            _write(out, {"source": label, **plan.to_json(opts.max_parts), **extras(opts, plan.tokens, plan.billed_tokens)})
        return
    billed = any(plan.billed is not None for _, _, plan in plans)
    rows = [[label, plan.preset, plan.tokens, plan.wrapper_tokens, "x".join(map(str, plan.grid)) if plan.grid else "",
             "x".join(map(str, plan.resized)) if plan.resized else "", *([plan.billed or ""] if billed else []),
             *extras(opts, plan.tokens, plan.billed_tokens).values()] for label, _, plan in plans]
    _write(out, table(rows, ["image", "model", "tokens", "wrappers", "grid", "resized", *(["billed"] if billed else []), *extras(opts, 0).keys()]))
    if len(plans) == 1 and plans[0][2].n_parts > 1:
        _write(out, "\n" + _parts_table(plans[0][2], opts.max_parts))


def _parts_table(plan, max_parts: int) -> str:
    if plan.n_parts > max_parts:
        return f"{plan.n_parts} parts (more than --max-parts {max_parts}: not listed)" + (f"\n{plan.note}" if plan.note else "")
    rows = [[p.name, ",".join(map(str, p.grid)) if p.grid else "", ",".join(map(str, p.box)) if p.box else "", p.tokens] for p in plan.parts]
    text = table(rows + [["total", "", "", plan.tokens]], ["part", "row,col", "box (x0,y0,x1,y1)", "tokens"])
    return text + (f"\n{plan.note}" if plan.note else "")


def _draw(opts: BudgetOptions, image_path: str | None, plan, result: Result) -> None:
    from vlmtool.budget.dataset import draw_plan

    if plan.n_parts > opts.max_parts:
        raise UsageError(f"--draw: the plan has {plan.n_parts} parts, more than --max-parts {opts.max_parts}")
    result.log.append(f"wrote {draw_plan(plan, opts.draw, image_path)}")


def dataset_section(opts: BudgetOptions, models: list[str], out: BinaryIO, result: Result, paths: list[str]) -> None:
    from vlmtool.budget.dataset import budget_dataset

    models = _for(models, "image")
    s = budget_dataset(paths, models, settings(opts, models, "image"), rows_out=out if opts.rows else None, progress=opts.progress,
                       max_image_pixels=opts.max_image_pixels)
    for st in s["models"].values():
        st.update(extras(opts, st["total"], st["billed"]))
    if s["inputs_failed"]:
        first = next(e for e in s["errors"] if e["source"] in s["inputs_failed"]) if s["errors"] else {"source": s["inputs_failed"][0]}
        result.failures.append(f"{len(s['inputs_failed'])} input(s) could not be read, e.g. {first['source']}: {first.get('error', '')}")
    result.log += [f"rejected: {e['source']}: {e.get('error') or e['reason']}" for e in s["errors"][:10]]
    if opts.rows:
        return
    if opts.json:
        _write(out, s)
        return
    extra_cols = [k for k in ("kv_bytes", "price") if k in next(iter(s["models"].values()))]
    rows = [[m, st["images"], st["total"], st.get("mean"), st.get("p50"), st.get("p95"), st.get("max"), st["errors"],
             *[st[k] for k in extra_cols]] for m, st in s["models"].items()]
    lines = [table(rows, ["model", "images", "total", "mean", "p50", "p95", "max", "rejected", *extra_cols])]
    lines += [f"{m}: " + ", ".join(f"{k}: {v}" for k, v in st["histogram"].items()) for m, st in s["models"].items() if st.get("histogram")]
    if s["rejects"]:
        lines.append("rejects: " + ", ".join(f"{k}={v}" for k, v in s["rejects"].items()))
    _write(out, "\n".join(lines))


def video_section(opts: BudgetOptions, models: list[str], out: BinaryIO, result: Result, paths: list[str], sizes: list) -> None:
    from vlmtool.budget.video import VideoInfo, plan_video, probe

    models = _for(models, "video")
    st = settings(opts, models, "video")
    infos = [info for _, info in _readable(probe, paths, result)]
    for w, h in sizes:
        fps = opts.fps or (opts.frames / opts.duration if opts.frames and opts.duration else 1.0)
        dur = opts.duration if opts.duration is not None else (opts.frames or 0) / fps
        infos.append(VideoInfo(None, w, h, fps, int(opts.frames if opts.frames is not None else round(dur * fps)), dur))
    rows = []
    for info in infos:
        for m in models:
            o = {**st[m], **({"temporal_pool": opts.temporal_pool} if opts.temporal_pool > 1 else {})}
            if opts.context is None:
                n = opts.frames if opts.frames is not None else info.frames
                r = {**info.to_json(), "model": m, "frames_counted": n, "temporal_pool": opts.temporal_pool,
                     "tokens": video_tokens(m, n, info.width, info.height, **o)}
            else:
                r = plan_video(m, info, opts.context, opts.reserved, opts.select, opts.sample_fps, opts.frames, opts.max_frames,
                               count_text=opts.video_text, **o)
            rows.append({**r, **extras(opts, r["tokens"], _billed(m, r["tokens"], o))})
    if opts.json:
        for r in rows:
            _write(out, r)
        return
    trows = [[r.get("video") or f"{r['width']}x{r['height']}", r["model"], r.get("tokens_per_frame", ""), r.get("f_max", ""),
              r.get("selected", r.get("frames_counted")), r["tokens"], *[r[k] for k in ("kv_bytes", "price") if k in r]] for r in rows]
    lines = [table(trows, ["video", "model", "P/frame", "f_max", "frames", "tokens", *extras(opts, 0).keys()])]
    lines += [f"{r.get('video') or 'video'} {r['model']} {r['strategy']}: " + " ".join(f"{t:g}" for t in r["timestamps"])
              for r in rows if r.get("timestamps")]
    lines += [f"{r.get('video') or 'video'} {r['model']} text: {len(r['timestamp_text'])} timestamps ("
              + (f"{r['timestamp_tokens']} tokens" if r["timestamp_tokens"] is not None else f"{r['timestamp_chars']} characters, tokens not counted")
              + f") + {r['marker_tokens']} marker tokens, beside the {r['tokens']} visual tokens" + _text_note(r)
              for r in rows if r.get("timestamp_text")]
    _write(out, "\n".join(lines))


def _text_note(plan: dict) -> str:
    """Whether the plan's budget counted the text (--context, the default) or not."""
    if plan.get("budget") is None:
        return ""
    if plan.get("text_counted"):
        how = "" if plan.get("timestamp_tokens") is not None else " (a token a character: an upper bound)"
        return f"; counted in the budget{how}"
    return "; not counted in the budget (--no-video-text)"


def _billed(model: str, tokens: int, options: dict) -> float | None:
    """Billed tokens where the preset bills with a multiplier (gpt-4.1-mini's patches)."""
    from vlmtool.budget import preset_options

    mult = options.get("multiplier", preset_options(model).get("multiplier")) if PRESETS[model].image else None
    return None if mult is None else round(tokens * mult, 2)


def audio_section(opts: BudgetOptions, models: list[str], out: BinaryIO, result: Result, paths: list[str], soundtracks: list[str]) -> None:
    """Audio files, --seconds, and the sound of videos (a video without sound, or one the video
    section already reports as unreadable, adds nothing here)."""
    from vlmtool.budget import audio_tokens
    from vlmtool.budget.audio import probe_audio

    models = _for(models, "audio")
    st = settings(opts, models, "audio")
    clips = _readable(probe_audio, paths, result) + _readable(probe_audio, soundtracks, Result())
    clips += [("--seconds", opts.seconds)] if opts.seconds is not None else []
    rows = []
    for src, seconds in clips:
        for m in models:
            n = audio_tokens(m, seconds, **st[m])
            rows.append({"audio": src, "seconds": round(seconds, 4), "model": m, "tokens": n, **extras(opts, n)})
    if opts.json:
        for r in rows:
            _write(out, r)
        return
    trows = [[r["audio"], r["model"], r["seconds"], r["tokens"], *[r[k] for k in ("kv_bytes", "price") if k in r]] for r in rows]
    _write(out, table(trows, ["audio", "model", "seconds", "tokens", *extras(opts, 0).keys()]))


def write_list(opts: BudgetOptions, out: BinaryIO) -> None:
    """Every preset with its modalities, its configuration (release or class defaults) and source."""
    rows = [{"preset": p.name, "modalities": list(p.modalities), "config": p.config, "source": p.source} for p in PRESETS.values()]
    if opts.json:
        for r in rows:
            _write(out, r)
        return
    _write(out, table([[r["preset"], ",".join(r["modalities"]), r["config"], r["source"]] for r in rows],
                      ["preset", "modality", "config", "source"]))


def report(opts: BudgetOptions, out: BinaryIO) -> Result:
    """Everything `vlmtool budget` does; data goes to `out` (stdout), logs come back in Result."""
    if opts.list:
        write_list(opts, out)
        return Result()
    _check(opts)
    models = _models(opts.model)
    plan = Inputs.gather(opts)
    result = Result()
    for section in plan.sections(opts, models):
        section(opts, models, out, result)
    return result


def _models(spec: str) -> list[str]:
    models = [m.strip() for m in spec.split(",") if m.strip()]
    if not models:
        raise UsageError(f"--model {spec!r} names no preset; known presets: {', '.join(PRESETS)} (vlmtool budget --list)")
    for m in models:
        if m not in PRESETS:
            raise unknown(m)
    return list(dict.fromkeys(models))


def _check(opts: BudgetOptions) -> None:
    if opts.select not in STRATEGIES:
        raise UsageError(f"--select {opts.select!r}: use one of {', '.join(STRATEGIES)}")
    if opts.select == "fps" and not opts.sample_fps:
        raise UsageError("--select fps needs --sample-fps > 0")
    kv = (opts.kv_layers, opts.kv_heads, opts.head_dim)
    if any(v is not None for v in kv) and not all(v is not None for v in kv):
        raise UsageError("the KV cache needs all of --kv-layers, --kv-heads and --head-dim")
    for name in ("duration", "fps", "sample_fps", "seconds", "price_per_mtok"):
        v = getattr(opts, name)
        if v is not None and not math.isfinite(v):
            raise UsageError(f"--{name.replace('_', '-')} must be a finite number, got {v}")
