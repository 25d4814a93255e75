"""The folder a world or a fault corpus is written into: new, empty, or an earlier one's.

Each writes the list of its files (`files` in world.json or faults.json), so a rerun removes
exactly what an earlier one wrote and refuses a folder that holds anything else; a
`.world-pending.json` lists the files being written until that list is in place, so a killed
run is replaced by its rerun too.
"""

from __future__ import annotations

import os
from pathlib import Path

OWNED_LISTS = ("world.json", "faults.json")  # what a world or a fault corpus writes, with the list of its files
PENDING = ".world-pending.json"  # the files a world is writing, until its world.json is in place


def _listed_files(out: Path) -> set[str]:
    """Relative paths an earlier world or fault corpus wrote into `out`, as it listed them."""
    from vlmtool.core.shards import read_json

    owned: set[str] = set()
    for name in (*OWNED_LISTS, PENDING):
        if not (out / name).is_file():
            continue
        try:
            meta = read_json(out / name)
        except (OSError, ValueError):  # orjson's JSONDecodeError is a ValueError
            continue  # not a list a world wrote: the file is someone else's
        if isinstance(meta, dict) and isinstance(meta.get("files"), list):
            owned.update(f for f in meta["files"] if isinstance(f, str))
        elif name == "world.json" and isinstance(meta, dict) and isinstance(meta.get("shards"), int) and "seed" in meta:
            # a world.json from before "files": its shards and videos by number and name
            owned.update(f"{i:05d}.tar" for i in range(meta["shards"]))
            for v in meta.get("videos") or []:
                owned.update({f"videos/{v}", f"videos/{Path(v).stem}.json"})
        else:
            continue
        owned.add(name)
    return owned


def _entries(out: Path, prefix: str = "") -> list[str]:
    """Every non-folder entry under `out` (files, links, anything else), relative, links not followed."""
    found = []
    with os.scandir(out) as it:
        for e in it:
            if e.is_dir(follow_symlinks=False):
                found.extend(_entries(Path(e.path), f"{prefix}{e.name}/"))
            else:
                found.append(prefix + e.name)
    return found


def _is_leftover(rel: str, owned: set[str]) -> bool:
    """A temporary file of an owned one, left by a killed writer (atomic_path's `.NAME.*.tmp`,
    make_video's `STEM.tmp.mp4`)."""
    folder, _, name = rel.rpartition("/")
    for o in owned:
        o_folder, _, o_name = o.rpartition("/")
        if o_folder == folder and ((name.startswith(f".{o_name}.") and name.endswith(".tmp"))
                                   or name == f"{Path(o_name).stem}.tmp.mp4"):
            return True
    return False


def claim_folder(out: str | Path, files: list[str]) -> Path:
    """Make `out` ready for a new world (or fault corpus) that will write `files`: remove what an
    earlier one wrote there (as its world.json or faults.json lists it), refuse a folder that
    holds anything else, and note the files about to be written so a killed run can be replaced."""
    from vlmtool.core.shards import write_json
    from vlmtool.errors import UsageError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file: give a folder for the world")
    out.mkdir(parents=True, exist_ok=True)
    present = _entries(out)
    owned = _listed_files(out)
    strays = sorted(p for p in present if p not in owned and not _is_leftover(p, owned))
    if strays:
        shown = ", ".join(strays[:3]) + (f" and {len(strays) - 3} more" if len(strays) > 3 else "")
        raise UsageError(f"{out} holds files that no world wrote ({shown}): give an empty or new folder, or the folder of an "
                         "earlier world to replace")
    for rel in sorted(present, key=lambda r: r == PENDING):  # the pending list last: a kill here leaves it valid
        (out / rel).unlink()
    for folder in sorted({out / rel.rpartition("/")[0] for rel in present if "/" in rel}, key=lambda p: -len(p.parts)):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    write_json(out / PENDING, {"files": sorted(files)})
    return out


def release_folder(out: Path) -> None:
    """The world's own list is in place: the pending list is no longer needed."""
    (out / PENDING).unlink(missing_ok=True)
