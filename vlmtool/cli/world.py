"""`vlmtool world`: the synthetic shapes world, or the hostile corpus (--faults); every option's
default and help come from WorldOptions' fields."""

from __future__ import annotations

import typer

from vlmtool.cli._app import JSON, app, emit, options, param
from vlmtool.world.options import WORLD_DEFAULTS, WORLD_ONLY
from vlmtool.world.options import WorldOptions as W


def _faults_summary(summary: dict) -> dict:
    """What the corpus holds, in short: the truth itself is OUT/faults.json."""
    return {"out": summary["out"], "truth": f"{summary['out']}/faults.json", "seed": summary["seed"],
            "shards": len(summary["shards"]), "videos": len(summary["videos"]), **summary["totals"]}


def _for_people(summary: dict) -> dict:
    """The world's summary without its file list and tables (world.json has them), lists as text."""
    out = {k: v for k, v in summary.items() if k not in ("files", "objects")}
    out["videos"] = ", ".join(summary["videos"]) or "none"
    out["truncated_shard"] = ", ".join(f"{k}={v}" for k, v in (summary["truncated_shard"] or {}).items()) or "none"
    out["objects"] = ", ".join(f"{k}={v}" for k, v in summary["objects"]["popularity"].items()) or "none"
    return out


@app.command("world")
def world_cmd(
    out: str = typer.Argument(..., metavar="OUT", help="Folder to write into: new, empty, or an earlier world's (which is replaced)."),
    samples: int = param(W, "samples"),
    shard_size: int = param(W, "shard_size"),
    seed: int = param(W, "seed"),
    kind: str = param(W, "kind"),
    mismatch: float = param(W, "mismatch"),
    broken: float = param(W, "broken"),
    broken_tar: bool = param(W, "broken_tar"),
    videos: int = param(W, "videos"),
    sizes: str = param(W, "sizes"),
    plain: float = param(W, "plain"),
    faults: bool = param(W, "faults"),
    huge_caption_bytes: int = param(W, "huge_caption_bytes"),
    as_json: bool = JSON,
    progress: bool = param(W, "progress"),
) -> None:
    """Generate the synthetic world (images, captions, objects, videos, faults), or the hostile corpus."""
    from vlmtool.errors import UsageError

    opts = options(W, locals())
    given = {k: getattr(opts, k) for k in WORLD_ONLY}
    if faults:
        from vlmtool.world.faults import DEFAULT_HUGE_CAPTION_BYTES, make_faults

        other = [f"--{k.replace('_', '-')}" for k, v in given.items() if v != WORLD_DEFAULTS[k]]
        if other:
            raise UsageError(f"--faults writes the fixed hostile corpus: {', '.join(other)} not used with --faults")
        summary = make_faults(out, seed=seed, huge_caption_bytes=huge_caption_bytes or DEFAULT_HUGE_CAPTION_BYTES)
        emit(_faults_summary(summary), as_json)
        return
    if huge_caption_bytes is not None:
        raise UsageError("--huge-caption-bytes sizes the huge caption of the hostile corpus: use it with --faults")
    from vlmtool.world import make_world

    summary = make_world(out, seed=seed, progress=progress, **given)
    emit(summary if as_json else _for_people(summary), as_json)
