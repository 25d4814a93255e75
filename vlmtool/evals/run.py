"""One evaluation of one model: POPE (built-in settings or --questions files), the blind
baseline, the swap test and CHAIR, into one JSON summary; and several models side by side."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from vlmtool.core.options import DEVICE, PROGRESS, option
from vlmtool.errors import JobFailed, UsageError
from vlmtool.evals.answerer import Answerer, Asker, load_answerer
from vlmtool.evals.chair import read_synonyms
from vlmtool.evals.data import ImageLoader, ImageSet, read_images
from vlmtool.evals.pope import SETTINGS, Probe, build_probes, negatives_overlap, read_questions
from vlmtool.evals.tasks import TASKS, EvalContext


@dataclass(frozen=True)
class EvalOptions:
    """`vlmtool eval`'s options (see its --help); the subcommand gives the tasks."""

    tasks: tuple[str, ...] = tuple(TASKS)
    settings: tuple[str, ...] = option(SETTINGS, "Built-in POPE settings, comma-separated.")
    questions: tuple[str, ...] = option((), "POPE JSONL file(s) ({question_id, image, text, label}), as published; results under "
                                        "pope.<file stem>. Repeatable.", flags=("--questions", "-q"), metavar="FILE")
    image_root: str | None = option(None, "Folder the --questions `image` names are files in.", metavar="DIR")
    objects_field: str = option("objects", "The JSON field listing each sample's object labels.")
    vocabulary: str | None = option(None, "Objects and synonyms, `label, synonym, ...` a line (CHAIR's synonyms.txt format).",
                                    metavar="FILE")  # also extra labels for negatives
    per_image: int = option(3, "POPE: yes probes (and as many no probes) per image, at most.", min=1)
    limit: int = option(1000, "Read at most this many samples (0: all).", min=0)
    chair_images: int = option(200, "CHAIR: describe at most this many images (0: all).", min=0)
    seed: int = option(0, "Seed of the random negatives and swap partners.")
    batch_size: int = option(16, "Questions per call to the model.", min=1)
    max_new_tokens: int = option(8, "Tokens of a yes/no answer.", min=1)
    describe_tokens: int = option(96, "Tokens of a CHAIR description.", min=1)
    device: str = DEVICE()
    progress: bool = PROGRESS()


def resolve_answerer(model: str | Answerer, device: str = "auto") -> tuple[Answerer, str | None]:
    """An Answerer, or a checkpoint folder made into one: (answerer, checkpoint path or None)."""
    if isinstance(model, (str, Path)):
        if not Path(model).is_dir():
            raise UsageError(f"checkpoint {model}: no such folder")
        return load_answerer(str(model), device), str(model)
    return model, None


def _probes(opts: EvalOptions, data: ImageSet) -> tuple[dict[str, list[Probe]], list[dict]]:
    if opts.questions:
        stems = [Path(q).stem for q in opts.questions]
        if len(set(stems)) != len(stems):
            raise UsageError("--questions: two files share a name; each file's stem names its results")
        sets, bad = {}, []
        for q, stem in zip(opts.questions, stems):
            sets[stem], b = read_questions(q)
            bad += b
        return sets, bad
    extra = list(read_synonyms(opts.vocabulary)) if opts.vocabulary else []
    return build_probes(data.images, opts.per_image, opts.seed, opts.settings, extra), []


def _no_probe_message(opts: EvalOptions, data: ImageSet, bad_lines: list[dict]) -> str:
    if opts.questions:
        return f"no probe could be read from --questions ({len(bad_lines)} bad lines)"
    if not data.samples:
        return "no sample could be read from the inputs" + (f" (rejects: {data.rejects})" if data.rejects else "")
    if not data.with_objects():
        return f"no sample has object metadata: give --objects-field (now {opts.objects_field!r}) or --questions"
    return "no sample has both a present and an absent object to ask about"


def _load(inputs: list[str] | None, opts: EvalOptions) -> tuple[ImageSet, dict[str, list[Probe]], list[dict]]:
    """The images and the probes (built, or read from --questions, with their bad lines)."""
    unknown = [t for t in opts.tasks if t not in TASKS] + [s for s in opts.settings if s not in SETTINGS]
    if unknown:
        raise UsageError(f"unknown task or setting {', '.join(unknown)}: tasks are {', '.join(TASKS)}, settings {', '.join(SETTINGS)}")
    if not opts.settings and not opts.questions:
        raise UsageError(f"--settings names no setting: use some of {', '.join(SETTINGS)}")
    if not inputs and not (opts.questions and opts.image_root):
        raise UsageError("give shards to evaluate on (INPUTS), or --questions FILE with --image-root DIR")
    if opts.image_root and not Path(opts.image_root).is_dir():
        raise UsageError(f"--image-root {opts.image_root}: no such folder")
    data = read_images(inputs, opts.objects_field, opts.limit, progress=opts.progress) if inputs else ImageSet()
    needs_probes = any(TASKS[t].needs_probes for t in opts.tasks)
    probes, bad = _probes(opts, data) if needs_probes else ({}, [])
    if (needs_probes and not any(probes.values())) or (opts.tasks and not needs_probes and not data.with_objects()):
        raise UsageError(_no_probe_message(opts, data, bad))
    return data, probes, bad


def _setup(answerer: Answerer, inputs: list[str] | None, opts: EvalOptions) -> EvalContext:
    data, probes, bad = _load(inputs, opts)
    asker = Asker(answerer, ImageLoader(data.images, opts.image_root), opts.batch_size, opts.progress)
    return EvalContext(opts, data, asker, probes, bad)


def write_probes(inputs: list[str], out: str | Path, opts: EvalOptions = EvalOptions()) -> dict:
    """The built-in probes as POPE question files, OUT/questions/pope_SETTING.jsonl, without a
    model (for other tools, or to run later with --questions)."""
    from dataclasses import replace

    from vlmtool.evals.pope import write_questions

    if opts.questions:
        raise UsageError("--questions-only writes the built-in probes: leave out --questions")
    data, probes, _ = _load(inputs, replace(opts, tasks=("pope",)))
    files = {s: str(write_questions(Path(out) / "questions" / f"pope_{s}.jsonl", ps)) for s, ps in probes.items()}
    return {"out": str(out), "images": len(data.images), "probes": {s: len(ps) for s, ps in probes.items()}, "questions": files,
            "bad": {"rejected_samples": data.rejects, "samples_without_objects": data.without_objects}}


def _check_answered(ctx: EvalContext, summary: dict) -> None:
    """A run that answered nothing that needs an image fails with the cause."""
    seen = sum(t.answered(summary[t.name]) for t in TASKS.values() if t.name in summary)
    if seen or set(ctx.opts.tasks) <= {"blind"}:
        return
    ex = ctx.asker.bad_examples[0] if ctx.asker.bad_examples else None
    cause = f": {sum(ctx.asker.bad.values())} images failed, e.g. {ex['image']!r} ({ex['reason']}: {ex['detail']})" if ex else ""
    raise JobFailed("no probe could be answered" + cause)


def evaluate(model: str | Answerer, inputs: list[str] | None = None, opts: EvalOptions = EvalOptions(),
             out: str | Path | None = None) -> dict:
    """Evaluate one model (a checkpoint folder or an Answerer) on shards (INPUTS: a world folder,
    shard paths or patterns) and/or POPE question files; returns the JSON summary, also written
    with report.png, the question files and every answer into `out` when given.

    Summary keys: pope.<setting>.{accuracy,precision,recall,f1,yes_ratio,...}, blind (same
    keys), negatives_overlap (the share of negative questions two settings have in common),
    swap.{both_correct,flip_rate,wrong_way,pairs}, chair.{chair_i,chair_s,...}, model (connector,
    visual tokens, KV bytes, train seconds), bad (images that failed, bad question lines,
    rejected samples), checkpoint."""
    t0 = time.perf_counter()
    answerer, checkpoint = resolve_answerer(model, opts.device)
    ctx = _setup(answerer, inputs, opts)
    summary: dict = {"checkpoint": checkpoint, "source": "questions" if opts.questions else "built-in",
                     "inputs": list(inputs or []), "questions": list(opts.questions), "images": len(ctx.data.images),
                     "probes": {k: len(v) for k, v in ctx.probes.items()}, "negatives_overlap": negatives_overlap(ctx.probes)}
    for task in TASKS.values():
        if task.name in opts.tasks:
            summary[task.name] = task.run(ctx)
    from vlmtool.evals.cost import model_cost

    summary["model"] = model_cost(checkpoint, answerer)
    summary["bad"] = {"images": dict(ctx.asker.bad), "image_examples": ctx.asker.bad_examples,
                      "question_lines": len(ctx.bad_lines), "line_examples": ctx.bad_lines[:10],
                      "rejected_samples": ctx.data.rejects, "samples_without_objects": ctx.data.without_objects,
                      "stopped_at_limit": ctx.data.truncated}
    _check_answered(ctx, summary)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    if out is not None:
        from vlmtool.evals.report import write_outputs

        summary["out"] = str(out)
        write_outputs(out, summary, ctx.probes if not opts.questions else {}, ctx.asker.cache)
    return summary


def _names(models: list) -> list[str]:
    """A folder name per compared model, always one plain component under --out: its index and
    its folder's own name made safe (`-c ..`, `-c .`, `-c a/b/..` and odd characters included)."""
    import re

    out = []
    for i, m in enumerate(models):
        raw = Path(m).resolve().name if isinstance(m, (str, Path)) else type(m).__name__
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", raw).strip("._")[:60] or "model"
        out.append(f"{i}-{safe}")
    return out


def compare(models: list, inputs: list[str] | None = None, opts: EvalOptions = EvalOptions(),
            out: str | Path | None = None) -> dict:
    """Several models on the same probes, side by side: {"checkpoints": {name: summary}, "table":
    rows of POPE F1 per setting, blind F1, swap both_correct, visual tokens, KV bytes, train seconds}."""
    from vlmtool.evals.report import comparison_rows, write_comparison

    if not models:
        raise UsageError("give at least one --checkpoint")
    runs = {}
    for name, m in zip(_names(models), models):
        runs[name] = evaluate(m, inputs, opts, out=Path(out) / name if out is not None else None)
    result = {"checkpoints": runs, "table": comparison_rows(runs)}
    if out is not None:
        write_comparison(out, result)
    return result
