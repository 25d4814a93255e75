"""One scaffold for every job: the job folder, its lock, the settings check, the summary, the
manifest and the merged rejects. A job writes only its own logic on top (see
docs/architecture.md for the contract).

    with Job("inspect", out, opts, refs) as job:
        records = job.records()                            # this pass's per-shard completion records
        run = run_shards(records, prep, open_sink, ...)    # core/batches.py
        return job.finish(records, run, summarize)         # manifest.json + rejects.jsonl + summary

- Options are one frozen dataclass per job, built once in the CLI and passed whole. Its fields
  are the settings written to the manifest and compared on resume; a field declared with
  `free()` (workers, progress, ...) may change between runs.
- A folder is one job: a rerun with other inputs or other settings is refused with the list of
  what differs, before anything is written.
- Each rank holds an exclusive lock on `OUT/.lock-rRANK` while it runs, so two launches of the
  same job on one folder cannot interleave (and two synth runs never pay twice); temporary files
  a killed run of this rank left behind are removed at the start.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

from vlmtool.core.runtime import Dist, dist_info, drop_lock_fd, hold_lock_fd
from vlmtool.core.shards import JobDir, ShardRef, read_json, temp_pattern, write_json
from vlmtool.errors import UsageError

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]*@")
# signed-URL and token query parameters (S3/GCS presigned URLs, API keys in URLs)
_SECRET_QUERY = re.compile(r"(?i)([?&](?:x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|signature|sig|"
                           r"token|access_token|api_key|apikey|key)=)[^&\s#]+")


def free(default: Any = None, **kw):
    """A dataclass field for an option that may change between a run and its resume (workers,
    progress bars, timeouts): it is written to the manifest but not compared."""
    return dataclasses.field(default=default, metadata={"free": True}, **kw)


def redact(value: Any) -> Any:
    """Strip credentials from URLs (`http://user:key@host` -> `http://***@host`) anywhere in a
    value that is stored (manifests, logs)."""
    if isinstance(value, str):
        return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub(r"\1***@", value))
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    return value


def options_dict(opts) -> dict:
    """Every option, as stored in the manifest (credentials in URLs redacted)."""
    return redact({f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)})


def settings(opts) -> dict:
    """The options a resume must keep the same."""
    return redact({f.name: getattr(opts, f.name) for f in dataclasses.fields(opts) if not f.metadata.get("free")})


class Job:
    """One job's folder for one rank: lock, settings check, passes, summary and manifest."""

    def __init__(self, name: str, out: str | os.PathLike, opts, refs: list[ShardRef], dist: Dist | None = None):
        self.name, self.opts, self.refs = name, opts, refs
        self.dist = dist or dist_info()
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise UsageError(f"--out {self.out} is a file: give a folder (it is created if missing)")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create the output folder {self.out}: {e.strerror or e}") from None
        self._lock_fd = self._lock()
        self._remove_stale_temps()
        self._check_settings()
        self.t0 = time.perf_counter()

    # ---- the folder
    def _lock(self) -> int:
        import fcntl

        path = self.out / f".lock-r{self.dist.rank}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise UsageError(f"another vlmtool job (rank {self.dist.rank}) is running in {self.out}: wait for it to end, "
                             "or use another --out") from None
        hold_lock_fd(fd)
        return fd

    def _remove_stale_temps(self) -> None:
        """Temporary files this rank left when it was killed (no live writer: we hold the lock)."""
        for p in self.out.rglob(temp_pattern(self.dist.rank)):
            p.unlink(missing_ok=True)

    def _check_settings(self) -> None:
        meta = self.out / "_job.json"
        mine = {"job": self.name, "inputs": redact([s.url for s in self.refs]), "settings": settings(self.opts)}
        if not meta.exists():
            write_json(meta, mine)  # ranks racing here write the same bytes
            return
        theirs = read_json(meta)
        if theirs != mine and not self._has_progress():
            write_json(meta, mine)  # nothing was made with the old settings (a failed start): the new ones hold
            return
        if theirs.get("job") != self.name:
            raise UsageError(f"{self.out} holds the output of a {theirs.get('job')} job: use a new --out folder")
        if theirs.get("inputs") != mine["inputs"]:
            raise UsageError(f"{self.out} holds the output of a different {self.name} job (other inputs): "
                             "use a new --out folder, or delete this one to start over")
        old = theirs.get("settings", {})
        diff = [k for k in mine["settings"] if old.get(k) != mine["settings"][k]]
        if diff:
            shown = ", ".join(f"{k} ({old.get(k)!r} then, {mine['settings'][k]!r} now)" for k in diff[:6])
            raise UsageError(f"{self.out} was made with other settings: {shown}; rerun with the same options to resume, "
                             "or use a new --out folder")

    def _has_progress(self) -> bool:
        """Whether anything of the job was finished: a completion record or a training state."""
        done = self.out / "_done"
        return (done.exists() and any(p.suffix == ".json" for p in done.rglob("*.json"))) or (self.out / "train_state.pt").exists()

    def close(self) -> None:
        if self._lock_fd is not None:
            drop_lock_fd(self._lock_fd)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- passes and state
    def records(self, stage: str | None = None) -> JobDir:
        """The completion records of one pass (a job of several passes names each one)."""
        return JobDir(self.out, self.name, self.refs, self.dist, stage=stage)

    def state_path(self, name: str) -> Path:
        """A file of the job's own bookkeeping (not an output), under OUT/_state/."""
        return self.out / "_state" / name

    # ---- summary and manifest
    def header(self) -> dict:
        from vlmtool.core.runtime import threads_chosen

        threads = threads_chosen()
        return {"job": self.name, "out": str(self.out), "rank": self.dist.rank, "world_size": self.dist.world_size,
                **({"threads": threads} if threads else {})}

    def incomplete(self, records: JobDir, this_run: dict, waiting_for: str = "the last rank to finish writes manifest.json") -> dict:
        missing = sum(not records.is_done(s) for s in records.shards)
        return {**self.header(), "complete": False, "shards_missing": missing, "this_run": this_run,
                "note": f"other ranks still running: {waiting_for}"}

    def write_manifest(self, records: JobDir, totals: dict, extra: dict | None = None) -> dict:
        from vlmtool.core.shards import atomic_write, dumps, package_versions

        recs = records.records()
        shards = {name: {k: v for k, v in rec.items() if k != "rejects"} for name, rec in recs.items()}
        manifest = {"job": self.name, "options": options_dict(self.opts), "versions": package_versions(),
                    "inputs": redact([s.url for s in self.refs]), "world_size": self.dist.world_size,
                    "launcher": self.dist.launcher, "complete": len(recs) == len(self.refs), "totals": totals,
                    "shards": shards, **(extra or {})}
        write_json(self.out / "manifest.json", manifest)
        # One rejects log for the whole job, in input order, rebuilt from the records.
        lines = [dumps(r) for rec in recs.values() for r in rec.get("rejects", [])]
        atomic_write(self.out / "rejects.jsonl", b"".join(line + b"\n" for line in lines))
        return manifest

    def finish(self, records: JobDir, run, summarize: Callable[[dict[str, dict]], dict] | None = None,
               extra: dict | None = None) -> dict:
        """The summary of a one-pass shard job: the rank that sees every shard done writes the
        manifest and the merged rejects; the others report their own part."""
        from vlmtool.core.batches import merge_totals

        this_run = run.to_json()
        if not records.all_done():
            return self.incomplete(records, this_run)
        recs = records.records()
        totals = merge_totals(recs)
        more = {**(summarize(recs) if summarize else {}), **(extra or {})}
        self.write_manifest(records, totals, more)
        return {**self.header(), "complete": True, **totals, **more, "this_run": this_run}


def log(job: str, msg: str) -> None:
    """A log line on stderr, prefixed with the job's name."""
    print(f"[{job}] {msg}", file=sys.stderr)
