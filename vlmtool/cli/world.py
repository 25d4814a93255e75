"""`vlmtool world`: the synthetic shapes world, or the hostile corpus (--faults)."""

from __future__ import annotations

import typer

from vlmtool.cli._app import JSON, PROGRESS, app, emit

WORLD_DEFAULTS = {"kind": "scenes", "samples": 64, "shard_size": 16, "mismatch": 0.0, "broken": 0.0, "broken_tar": False, "videos": 0, "sizes": "varied", "plain": 0.0}


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
    samples: int = typer.Option(64, "--samples", "-n", min=1, help="Number of image-caption samples."),
    shard_size: int = typer.Option(16, "--shard-size", min=1, help="Samples per shard."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same bytes."),
    kind: str = typer.Option("scenes", "--kind", help="Which objects: scenes (16 kinds of object in 4 scene types that co-occur, "
                             "1-6 an image) or shapes (the 6 shapes of the first waves, 1-4 an image)."),
    mismatch: float = typer.Option(0.0, "--mismatch", min=0.0, max=1.0, help="Fraction of samples given another scene's caption."),
    broken: float = typer.Option(0.0, "--broken", min=0.0, max=1.0, help="Fraction of broken samples (every kind the core rejects)."),
    broken_tar: bool = typer.Option(False, "--broken-tar", help="Cut the last shard inside a member's data."),
    videos: int = typer.Option(0, "--videos", min=0, help="Short videos with known static and moving segments."),
    sizes: str = typer.Option("varied", "--sizes", help="Image size mix: varied (96 px to 1920x1080, tall, wide), small (64-160 px) "
                              "or square (64-160 px, square only)."),
    plain: float = typer.Option(0.0, "--plain", min=0.0, max=1.0,
                                help="Fraction of captions that name the objects without their colours ('A circle above a star.')."),
    faults: bool = typer.Option(False, "--faults", help="Write the hostile corpus instead: every fault class a reader must survive, "
                                "with the exact expected outcome of each in OUT/faults.json. Only --seed and --huge-caption-bytes apply."),
    huge_caption_bytes: int = typer.Option(None, "--huge-caption-bytes", metavar="BYTES",
                                           help="With --faults: the size of the huge caption (default 3 MiB; 300000000 for memory tests)."),
    as_json: bool = JSON,
    progress: bool = PROGRESS,
) -> None:
    """Generate the synthetic world (images, captions, objects, videos, faults), or the hostile corpus."""
    from vlmtool.errors import UsageError

    given = {"kind": kind, "samples": samples, "shard_size": shard_size, "mismatch": mismatch, "broken": broken, "broken_tar": broken_tar,
             "videos": videos, "sizes": sizes, "plain": plain}
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
