"""Charts as matplotlib figures (Agg backend, imported only here and only when a chart is drawn).

matplotlib is the optional `plot` extra: without it, asking for a chart is one clear error.
"""

from __future__ import annotations

from pathlib import Path

from vlmtool.errors import UsageError


def figure(width: float = 9.0, height: float = 4.5, **kw):
    """A new (figure, axes) on the Agg backend."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError("charts need matplotlib: pip install 'vlmtool[plot]' (or leave out --plot)") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), **kw)


def save(fig, path: str | Path, dpi: int = 120) -> Path:
    """Write the figure as a PNG atomically and free it."""
    import matplotlib.pyplot as plt

    from vlmtool.core.shards import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    plt.close(fig)
    return Path(path)


def plot_train_log(out: Path, title: str, ylabel: str = "cross-entropy") -> Path | None:
    """loss.png: the training loss per step (and any `val_*` losses) from OUT/train_log.jsonl."""
    import orjson

    log = Path(out) / "train_log.jsonl"
    rows = [orjson.loads(line) for line in log.read_bytes().splitlines() if line.strip()] if log.exists() else []
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    if not train:
        return None
    fig, ax = figure(8, 4)
    ax.plot([s for s, _ in train], [v for _, v in train], label="train loss", lw=1)
    for name, marker in (("val_loss", "o"), ("val_text_loss", "s")):
        pts = [(r["step"], r[name]) for r in rows if r.get(name) is not None]
        if pts:
            ax.plot([s for s, _ in pts], [v for _, v in pts], marker, label=name.replace("_", " "))
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend()
    return save(fig, Path(out) / "loss.png")
