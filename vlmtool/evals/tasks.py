"""The eval tasks, one object each: the subcommand that runs it, whether it needs POPE's
probes, how it runs on an evaluation's shared context, and what it adds to the people's
table, the comparison rows and the chart's title. `evaluate`, the report and `vlmtool eval`
iterate over TASKS, so a new task is one entry here (its run function may live in a module of
its own). Importing this module is light: a task's work imports what it needs when it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlmtool.evals.answerer import Asker
    from vlmtool.evals.data import ImageSet
    from vlmtool.evals.pope import Probe

KEYS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


@dataclass
class EvalContext:
    """What one evaluation reads once and shares between its tasks."""

    opts: Any  # EvalOptions
    data: ImageSet
    asker: Asker
    probes: dict[str, list[Probe]]
    bad_lines: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class EvalTask:
    name: str
    command: str  # the `vlmtool eval` subcommand that runs it (`all` runs every task)
    help: str  # that subcommand's help (the first task of a command gives it)
    needs_probes: bool  # built from object labels or read from --questions
    run: Callable[[EvalContext], dict]
    text: Callable[[dict], list[str]] = lambda summary: []  # lines of the people's table
    row: Callable[[dict], dict] = lambda result: {}  # cells of one comparison row, from this task's result
    title: tuple[str, ...] = ()  # keys of this task's result shown in the chart's title
    answered: Callable[[dict], int] = lambda result: 0  # how many answers that needed an image it got


def fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def grid(header: list[str], rows: list[list]) -> str:
    cells = [header] + [[fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


# ---------------------------------------------------------------------------------- POPE and blind

def _pope_run(ctx: EvalContext, blind: bool = False) -> dict:
    from vlmtool.evals.metrics import pope_metrics

    out = {}
    for name, probes in ctx.probes.items():
        answers = ctx.asker.ask([(None if blind else p.image, p.text) for p in probes], ctx.opts.max_new_tokens,
                                desc=f"{'blind' if blind else 'pope'} {name}")
        got = [(p.label, a) for p, a in zip(probes, answers) if a is not None]
        out[name] = {**pope_metrics([g[0] for g in got], [g[1] for g in got]), "unanswered": len(probes) - len(got)}
    return out


def _pope_text(summary: dict) -> list[str]:
    """One grid for POPE and blind: per setting, POPE's scores with the blind F1 and yes-ratio beside."""
    pope, blind = summary.get("pope", {}), summary.get("blind", {})
    names = list(pope or blind)
    if not names:
        return []
    rows = [[n, *(pope.get(n, {}).get(k) for k in KEYS), blind.get(n, {}).get("f1"), blind.get(n, {}).get("yes_ratio"),
             (pope.get(n) or blind.get(n))["n"]] for n in names]
    lines = [grid(["setting", *KEYS, "blind_f1", "blind_yes", "n"], rows)]
    if summary.get("negatives_overlap"):
        lines.append("negatives shared: " + ", ".join(f"{k} {fmt(v)}" for k, v in summary["negatives_overlap"].items()))
    return lines


# ---------------------------------------------------------------------------------- swap

def _swap_run(ctx: EvalContext) -> dict:
    from vlmtool.evals.swap import pairs_from_images, pairs_from_probes, swap_metrics

    every = [p for ps in ctx.probes.values() for p in ps]
    pairs = pairs_from_probes(every, ctx.opts.seed) if ctx.opts.questions else pairs_from_images(every, ctx.data.images, ctx.opts.seed)
    n = ctx.opts.max_new_tokens
    a = ctx.asker.ask([(p.with_object, p.text) for p in pairs], n, desc="swap")
    b = ctx.asker.ask([(p.without_object, p.text) for p in pairs], n, desc="swap")
    return swap_metrics(pairs, a, b)


def _swap_text(summary: dict) -> list[str]:
    s = summary["swap"]
    return [f"swap: both_correct {fmt(s['both_correct'])} (flip_rate {fmt(s['flip_rate'])}, wrong_way "
            f"{fmt(s.get('wrong_way'))}) over {s['pairs']} pairs"]


# ---------------------------------------------------------------------------------- CHAIR

def _chair_run(ctx: EvalContext) -> dict:
    from vlmtool.evals.chair import DESCRIBE, Vocabulary, chair_scores, read_synonyms

    labelled = ctx.data.with_objects()
    if ctx.opts.chair_images:
        labelled = labelled[: ctx.opts.chair_images]
    synonyms = read_synonyms(ctx.opts.vocabulary) if ctx.opts.vocabulary else {}
    vocab = Vocabulary({o for im in ctx.data.with_objects() for o in im.objects}, synonyms)
    answers = ctx.asker.ask([(im.name, DESCRIBE) for im in labelled], ctx.opts.describe_tokens, desc="chair")
    got = [(a, im.objects) for im, a in zip(labelled, answers) if a is not None]
    out = chair_scores([g[0] for g in got], [g[1] for g in got], vocab)
    return {**out, "unanswered": len(labelled) - len(got), "prompt": DESCRIBE}


def _chair_text(summary: dict) -> list[str]:
    c = summary["chair"]
    return [f"chair: CHAIR_i {fmt(c['chair_i'])}, CHAIR_s {fmt(c['chair_s'])} over {c['descriptions']} descriptions"]


_POPE_HELP = ("POPE object-presence probes (random, popular, adversarial; or --questions files), "
              "with the blind baseline beside each setting (--no-blind leaves it out).")
TASKS: dict[str, EvalTask] = {t.name: t for t in (
    EvalTask("pope", "pope", _POPE_HELP, True, _pope_run, _pope_text,
             row=lambda r: {f"f1.{k}": v["f1"] for k, v in r.items()}, answered=lambda r: sum(m["n"] for m in r.values())),
    EvalTask("blind", "pope", _POPE_HELP, True, lambda ctx: _pope_run(ctx, blind=True),
             lambda s: [] if "pope" in s else _pope_text(s), row=lambda r: {f"blind_f1.{k}": v["f1"] for k, v in r.items()}),
    EvalTask("swap", "swap", "The swap test: the same question on two images that differ in the asked object (and hold as many "
             "objects); how often both answers are right.", True, _swap_run, _swap_text,
             row=lambda r: {"both_correct": r.get("both_correct")}, title=("both_correct",), answered=lambda r: r.get("pairs", 0)),
    EvalTask("chair", "chair", "CHAIR_i and CHAIR_s (Rohrbach et al., 2018) over detail descriptions of the images.", False,
             _chair_run, _chair_text, row=lambda r: {"chair_i": r.get("chair_i")}, title=("chair_i", "chair_s"),
             answered=lambda r: r.get("descriptions", 0)),
)}


def commands() -> dict[str, tuple[tuple[str, ...], str]]:
    """`vlmtool eval`'s subcommands: name -> (the tasks it runs, its help); `all` runs them all."""
    out: dict[str, tuple[tuple[str, ...], str]] = {}
    for t in TASKS.values():
        names, doc = out.get(t.command, ((), t.help))
        out[t.command] = ((*names, t.name), doc)
    everything = ", ".join(out)
    out["all"] = (tuple(TASKS), f"Everything: {everything}.")
    return out
