"""Shards in and out: input specs, rank assignment, atomic files, completion records, manifest.

A job directory holds the job's outputs, `_done/NAME.json` for each finished input shard (the
record a rerun uses to skip it, written only after the shard's outputs are in place), and
`manifest.json`, written by whichever rank sees every shard done. The discipline is datatrove's:
a cluster run and a local run are the same code, and a killed run loses at most the shards in
flight, which a rerun redoes from scratch.
"""

from __future__ import annotations

import glob
import io
import os
import platform
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson
from braceexpand import braceexpand

from vlmtool import __version__
from vlmtool.core.runtime import Dist, dist_info
from vlmtool.errors import JobFailed, UsageError

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://")
_UMASK = os.umask(0)
os.umask(_UMASK)


# ---------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class ShardRef:
    index: int  # position in the job's full, ordered input list
    url: str  # what webdataset's gopen opens: a path, pipe:..., http(s)://...
    name: str  # output-safe stem, unique within the job


def _is_shard(path: str) -> bool:
    return path.endswith(SHARD_SUFFIXES)


def is_stream(name: str) -> bool:
    """A `pipe:` command or a URL that is not a local file. A name that exists on disk is always a
    file, wherever it came from (a file may well be called `pipe:x.tar` or `https:x.tar`)."""
    return name.startswith(REMOTE_PREFIXES) and not os.path.lexists(name)


def open_input(name: str, stream_ok: bool = True):
    """Open an input for binary reading: a local file as a file, and only an explicit `pipe:` or
    URL spec (see is_stream) through webdataset's gopen. The one place the project opens inputs."""
    if is_stream(name):
        if not stream_ok:
            raise UsageError(f"input {name!r} is a stream, and only local files are read here")
        from webdataset.gopen import gopen

        return gopen(name, "rb")
    return open(name, "rb")


def _expand_one(spec: str, suffixes: tuple[str, ...]) -> list[str]:
    if os.path.lexists(spec):  # an existing name is taken literally: no braces, no glob, no shell
        if os.path.isdir(spec):
            found = sorted(str(p) for p in Path(spec).iterdir() if p.is_file() and p.name.endswith(suffixes))
            if not found:
                raise UsageError(f"directory {spec} holds no {'/'.join(suffixes)} files")
            return found
        return [spec]
    if spec.startswith(REMOTE_PREFIXES):
        return list(braceexpand(spec))
    out: list[str] = []
    for item in braceexpand(spec):
        if os.path.lexists(item):
            out.extend(_expand_one(item, suffixes) if os.path.isdir(item) else [item])
        elif glob.has_magic(item):
            found = sorted(glob.glob(item))
            if not found:
                raise UsageError(f"pattern {item!r} matches no file")
            out.extend(f for f in found if not os.path.isdir(f))
        else:
            raise UsageError(f"input {item!r} does not exist")
    return out


def expand_inputs(specs: Iterable[str], stdin: io.TextIOBase | None = None, suffixes=SHARD_SUFFIXES) -> list[str]:
    """Expand brace patterns, globs, directories and `-` (one input per line on stdin).

    Names found in a directory or by a glob are files, never streams; a name that exists is taken
    as it is. Only a `pipe:`/URL spec given as an argument or a stdin line, and not an existing
    file, is a stream (see is_stream). Order is kept as given (directories and globs sorted),
    duplicates are dropped.
    """
    out: list[str] = []
    for spec in specs:
        if spec == "-":
            lines = (stdin or sys.stdin).read().splitlines()
            for ln in lines:
                ln = ln.strip()
                if ln and not ln.startswith("#"):
                    out.extend(_expand_one(ln, suffixes))
            continue
        out.extend(_expand_one(spec, suffixes))
    seen: set[str] = set()
    unique = [x for x in out if not (x in seen or seen.add(x))]
    if not unique:
        raise UsageError("no inputs given")
    return unique


def shard_refs(urls: list[str]) -> list[ShardRef]:
    """Name each input by its file stem; where stems collide, prefix the input's position."""
    stems = []
    for u in urls:
        base = u.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
        for suf in SHARD_SUFFIXES:
            if base.endswith(suf):
                base = base[: -len(suf)]
                break
        stems.append("".join(c if c.isalnum() or c in "-_." else "_" for c in base) or "shard")
    dup = {s for s in stems if stems.count(s) > 1}
    return [ShardRef(i, u, f"{i:05d}-{s}" if s in dup else s) for i, (u, s) in enumerate(zip(urls, stems))]


def assign(items: list, rank: int, world_size: int) -> list:
    """This rank's share: round-robin over the ordered list, so shard i goes to rank i % world."""
    return items[rank::world_size]


# ---------------------------------------------------------------------------------- atomic files


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _rank() -> int:
    try:
        return dist_info().rank
    except UsageError:
        return 0


def temp_pattern(rank: int) -> str:
    """The glob of the temporary files atomic_path makes on `rank` (for removing stale ones)."""
    return f".*.r{rank}.*.tmp"


@contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success fsync it and rename it into place.

    On an exception the temporary file is removed and `final` is untouched, so a file under its
    final name is always complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.r{_rank()}.", suffix=".tmp", dir=final.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual mode
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # a writer may have replaced the file (safetensors does): the usual mode again
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(final: str | os.PathLike, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def dumps(obj: Any, indent: bool = False) -> bytes:
    opts = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
    if indent:
        opts |= orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
    return orjson.dumps(obj, option=opts)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, dumps(obj, indent=True) + b"\n")


def read_json(path: str | os.PathLike) -> Any:
    return orjson.loads(Path(path).read_bytes())


class ShardTarWriter:
    """Write one webdataset shard under a temporary name; `commit()` renames it into place.

    Members are written by webdataset's TarWriter with a fixed mtime, so the same samples give
    the same bytes. Values must already be bytes (original image bytes are copied as they are).
    """

    def __init__(self, final: str | os.PathLike):
        import webdataset as wds

        self.final = Path(final)
        self._ctx = atomic_path(self.final)
        self._tmp = self._ctx.__enter__()
        self._file = open(self._tmp, "wb")
        self._tar = wds.TarWriter(self._file, encoder=False, mtime=0, user="", group="")
        self.count = 0

    def write(self, sample: dict) -> None:
        self._tar.write(sample)
        self.count += 1

    def commit(self) -> Path:
        self._tar.close()  # closes self._file too
        self._ctx.__exit__(None, None, None)
        return self.final

    def abort(self) -> None:
        try:
            self._tar.close()
        finally:
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)


# ---------------------------------------------------------------------------------- job directory


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "vlmtool": __version__}
    for dist in ("torch", "open_clip_torch", "webdataset", "pillow", "av", "numpy", "orjson", "httpx"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


class JobDir:
    """The completion records of one pass of a job over its input shards (see core/job.py for
    the job folder around them)."""

    def __init__(self, out: str | os.PathLike, job: str, shards: list[ShardRef], dist: Dist | None = None,
                 stage: str | None = None):
        self.out = Path(out)
        self.job = job
        self.shards = shards
        self.dist = dist or dist_info()
        self.stage = stage  # a job of several passes keeps one record folder per pass
        self.done_dir = self.out / "_done" / stage if stage else self.out / "_done"
        self.done_dir.mkdir(parents=True, exist_ok=True)

    def record_path(self, ref: ShardRef) -> Path:
        return self.done_dir / f"{ref.name}.json"

    def is_done(self, ref: ShardRef) -> bool:
        return self.record_path(ref).exists()

    def mine(self) -> list[ShardRef]:
        return assign(self.shards, self.dist.rank, self.dist.world_size)

    def pending(self) -> list[ShardRef]:
        return [s for s in self.mine() if not self.is_done(s)]

    def write_record(self, ref: ShardRef, record: dict) -> None:
        record = {"shard": ref.url, "name": ref.name, "index": ref.index, "rank": self.dist.rank,
                  "world_size": self.dist.world_size, **record}
        write_json(self.record_path(ref), record)

    def records(self) -> dict[str, dict]:
        out = {}
        for ref in self.shards:
            p = self.record_path(ref)
            if p.exists():
                out[ref.name] = read_json(p)
        return out

    def all_done(self) -> bool:
        return all(self.is_done(s) for s in self.shards)

    def wait_all(self, timeout: float | None = None, poll: float = 0.5) -> None:
        """Block until every shard of the job has its record (a barrier through the filesystem,
        so it works the same under torchrun, SLURM arrays and separate launches)."""
        start = time.monotonic()
        while not self.all_done():
            if timeout is not None and time.monotonic() - start > timeout:
                missing = [s.name for s in self.shards if not self.is_done(s)]
                raise JobFailed(
                    f"waited {timeout:.0f}s for other ranks; shards still missing: {', '.join(missing[:10])}"
                    + (" ..." if len(missing) > 10 else "")
                    + ". Rerun the job (with the same --out) to finish them."
                )
            time.sleep(poll)
