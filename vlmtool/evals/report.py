"""The eval report: a short table for people (stderr), report.json, report.png (bars per
setting) and the files behind the numbers (the POPE question files, every answer)."""

from __future__ import annotations

from pathlib import Path

import orjson

from vlmtool.evals.tasks import TASKS, fmt, grid

def table(summary: dict) -> str:
    """Each task's lines (POPE and blind per setting, then swap and CHAIR), as aligned text."""
    lines = [line for t in TASKS.values() if t.name in summary for line in t.text(summary)]
    bad = summary.get("bad", {})
    if bad.get("images") or bad.get("question_lines"):
        lines.append(f"bad input: images {bad.get('images')}, question lines {bad.get('question_lines', 0)}")
    return "\n".join(lines)


def comparison_rows(runs: dict[str, dict]) -> list[dict]:
    """One row per model: each task's cells (F1 per setting and blind, swap both_correct, CHAIR_i),
    cost per sample."""
    rows = []
    for name, s in runs.items():
        row = {"checkpoint": name, "connector": s["model"]["connector"]}
        for t in TASKS.values():
            row.update(t.row(s[t.name]) if t.name in s else {})
        row.update({k: s["model"][k] for k in ("visual_tokens", "kv_cache_bytes", "train_seconds")})
        rows.append(row)
    return rows


def comparison_table(rows: list[dict]) -> str:
    header = list(dict.fromkeys(k for r in rows for k in r))
    return grid(header, [[r.get(k) for k in header] for r in rows])


def plot(summary: dict, path: str | Path) -> Path:
    """Bars per setting: F1 and yes-ratio with the image, and F1 blind."""
    from vlmtool.core.plots import figure, save

    pope, blind = summary.get("pope", {}), summary.get("blind", {})
    names = list(pope or blind)
    fig, ax = figure(max(5.0, 1.6 * len(names) + 3), 4.0)
    bars = [("F1", pope, "f1"), ("yes-ratio", pope, "yes_ratio"), ("F1 blind", blind, "f1")]
    bars = [b for b in bars if b[1]]
    width = 0.8 / max(1, len(bars))
    for i, (label, src, key) in enumerate(bars):
        ax.bar([x + i * width for x in range(len(names))], [src[n][key] for n in names], width, label=label)
    ax.set_xticks([x + width * (len(bars) - 1) / 2 for x in range(len(names))], names)
    ax.set_ylim(0, 1.3)  # headroom: the legend sits above the bars, never on one
    ax.set_ylabel("score")
    ax.set_xlabel("POPE setting")
    extra = [f"{k} {fmt(summary[t.name][k])}" for t in TASKS.values() if t.name in summary for k in t.title]
    ax.set_title(f"{summary.get('checkpoint') or 'model'}" + (f" ({', '.join(extra)})" if extra else ""), fontsize=9)
    if bars:
        ax.legend(loc="upper center", ncol=len(bars), fontsize=8, frameon=False)
    return save(fig, path)


def plot_comparison(rows: list[dict], path: str | Path) -> Path:
    """Bars of POPE F1 per setting, one group per setting, one bar per model."""
    from vlmtool.core.plots import figure, save

    settings = [k[3:] for k in rows[0] if k.startswith("f1.")] if rows else []
    fig, ax = figure(max(5.0, 1.8 * len(settings) + 3), 4.0)
    width = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        ax.bar([x + i * width for x in range(len(settings))], [r[f"f1.{s}"] for s in settings], width, label=r["checkpoint"])
    ax.set_xticks([x + width * (len(rows) - 1) / 2 for x in range(len(settings))], settings)
    ax.set_ylim(0, 1.3)
    ax.set_ylabel("POPE F1")
    ax.set_xlabel("POPE setting")
    ax.set_title("POPE F1 per setting, one bar per model", fontsize=9)
    ax.legend(loc="upper center", ncol=min(len(rows), 4), fontsize=8, frameon=False)
    return save(fig, path)


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_outputs(out: str | Path, summary: dict, probes: dict, answers: dict) -> None:
    """OUT/report.json, OUT/report.png (with matplotlib), OUT/questions/pope_SETTING.jsonl (built-in
    probes, POPE's format), OUT/answers.jsonl (every question asked and its answer)."""
    from vlmtool.core.shards import atomic_write, write_json
    from vlmtool.evals.pope import write_questions

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, ps in probes.items():
        write_questions(out / "questions" / f"pope_{name}.jsonl", ps)
    rows = [{"image": k[0], "question": k[1], "answer": v} for k, v in answers.items()]
    atomic_write(out / "answers.jsonl", b"".join(orjson.dumps(r) + b"\n" for r in rows))
    if _have_matplotlib() and (summary.get("pope") or summary.get("blind")):
        summary["report_png"] = str(plot(summary, out / "report.png"))
    write_json(out / "report.json", summary)


def write_comparison(out: str | Path, result: dict) -> None:
    from vlmtool.core.shards import write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if _have_matplotlib() and result["table"] and any(k.startswith("f1.") for k in result["table"][0]):
        result["report_png"] = str(plot_comparison(result["table"], out / "report.png"))
    write_json(out / "report.json", result)
