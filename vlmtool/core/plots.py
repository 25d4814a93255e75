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
