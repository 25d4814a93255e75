"""Instruction rows, grouped by the shard that holds their image.

One pass over instructions.jsonl checks every row, keeps each id once (the first) and files it
under its input shard in an SQLite table on disk (`_state/rows.sqlite`, built under a temporary
name and renamed when whole), so that the export can then read one shard's rows at a time:
memory stays bounded by one shard, whatever the size of the file. Rows that cannot be used are
counted and logged here: `bad_row` (a torn or non-JSON line, a row of the wrong type, a
conversation that is not user/assistant pairs), `unknown_shard` (it names no input shard) and
`duplicate_id`.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import orjson

from vlmtool.core.samples import IMAGE_EXTS, clean_detail
from vlmtool.core.shards import ShardRef, atomic_path, dumps, read_json, write_json
from vlmtool.errors import UsageError

IMAGE = "<image>"
_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,127}")


def safe_name(name: str) -> str:
    """A key or shard name as one file name: kept when it is plain (letters, digits, `_`, `-`),
    else its unsafe characters replaced and a hash of the original appended, so `../x`, `/etc/x`
    or `a/b` can never leave the folder it is written in, and two names stay two names."""
    if _SAFE.fullmatch(name):
        return name
    digest = hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:100] + "-" + digest


@dataclass(frozen=True)
class Row:
    """One usable instruction row: its id, the image's key and extension, and the turns
    [(user, assistant), ...] with no `<image>` placeholder left in the text."""

    id: str
    key: str
    ext: str | None
    task: str | None
    turns: tuple[tuple[str, str], ...]

    def to_json(self) -> bytes:
        return dumps({"id": self.id, "key": self.key, "ext": self.ext, "task": self.task, "turns": self.turns})

    @classmethod
    def from_json(cls, data: bytes) -> Row:
        d = orjson.loads(data)
        return cls(d["id"], d["key"], d["ext"], d["task"], tuple((u, a) for u, a in d["turns"]))


class BadRow(Exception):
    pass


def parse_row(line: bytes) -> tuple[Row, dict]:
    """A line of instructions.jsonl -> (Row, the raw row), or BadRow saying why."""
    from vlmtool.vlm.tokenizer import turns_from_record

    try:
        raw = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise BadRow(f"not JSON (a torn line?): {e}") from None
    if not isinstance(raw, dict):
        raise BadRow(f"a JSON {type(raw).__name__}, not an object")
    for field in ("id", "key"):
        if not isinstance(raw.get(field), str) or not raw[field]:
            raise BadRow(f"{field!r} is missing or not a string")
    try:
        turns = turns_from_record(raw)
    except UsageError as e:
        raise BadRow(str(e)) from None
    clean = tuple((u.replace(IMAGE, "").strip(), a) for u, a in turns)
    image = raw.get("image")
    ext = image.rsplit(".", 1)[-1].lower() if isinstance(image, str) and "." in image else None
    task = raw.get("task") if isinstance(raw.get("task"), str) else None
    return Row(raw["id"], raw["key"], ext if ext in IMAGE_EXTS else None, task, clean), raw


class ShardMatcher:
    """Which input shard a row names: its `shard` exactly as given, else the shard's stem (synth
    writes the input as it was named; training joins by stem the same way), else the first part
    of its `image` ("SHARD/KEY.jpg")."""

    def __init__(self, refs: list[ShardRef]):
        from vlmtool.vlm.data import shard_stem

        self.stem = shard_stem
        self.by_url = {r.url: r.index for r in refs}
        stems = Counter(shard_stem(r.url) for r in refs)
        self.by_stem = {shard_stem(r.url): r.index for r in refs if stems[shard_stem(r.url)] == 1}
        self.by_name = {r.name: r.index for r in refs}

    def __call__(self, raw: dict) -> int | None:
        shard = raw.get("shard")
        if isinstance(shard, str) and shard:
            if shard in self.by_url:
                return self.by_url[shard]
            if self.stem(shard) in self.by_stem:
                return self.by_stem[self.stem(shard)]
        image = raw.get("image")
        if isinstance(image, str) and "/" in image:
            head = image.rsplit("/", 1)[0]
            return self.by_name.get(head, self.by_stem.get(head))
        return None


class RowIndex:
    """The rows of each input shard, read back one shard at a time."""

    def __init__(self, path: Path):
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)

    def rows(self, shard: int) -> dict[str, list[Row]]:
        """key -> the shard's rows of that key, in file order."""
        out: dict[str, list[Row]] = {}
        for key, body in self.db.execute("SELECT key, body FROM rows WHERE shard = ? ORDER BY line", (shard,)):
            out.setdefault(key, []).append(Row.from_json(body))
        return out

    def close(self) -> None:
        self.db.close()


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                yield n, line


def build_index(instructions: Path, refs: list[ShardRef], state: Path) -> dict:
    """Split instructions.jsonl into `state/rows.sqlite` once; the split's counts (and its
    rejects, in `state/split-rejects.jsonl`). A finished split is reused."""
    done = state / "split.json"
    if done.exists() and (state / "rows.sqlite").exists():
        return read_json(done)
    match = ShardMatcher(refs)
    counts: Counter = Counter()
    with atomic_path(state / "split-rejects.jsonl") as rej_tmp, open(rej_tmp, "wb") as rejects, \
            atomic_path(state / "rows.sqlite") as db_tmp:
        db = sqlite3.connect(db_tmp)
        db.execute("PRAGMA journal_mode = OFF")  # the file is whole only once renamed: no journal needed
        db.execute("PRAGMA synchronous = OFF")
        db.execute("CREATE TABLE rows (id TEXT PRIMARY KEY, shard INTEGER, line INTEGER, key TEXT, body BLOB)")
        for n, line in _lines(instructions):
            counts["lines"] += 1
            reason, detail, key, shard = _file_row(db, match, n, line)
            if reason:
                counts[reason] += 1
                rejects.write(dumps({"shard": shard, "key": key, "line": n, "reason": reason, "detail": clean_detail(detail)}) + b"\n")
        db.execute("CREATE INDEX by_shard ON rows (shard, line)")
        db.commit()
        db.close()
    split = {"lines": counts.pop("lines", 0), "rejected": dict(sorted(counts.items()))}
    write_json(done, split)
    return split


def _file_row(db, match: ShardMatcher, n: int, line: bytes) -> tuple[str | None, str, str | None, str | None]:
    """File one line under its shard: (reject reason or None, detail, key, shard named)."""
    try:
        row, raw = parse_row(line)
    except BadRow as e:
        return "bad_row", f"line {n}: {e}", None, None
    shard = match(raw)
    if shard is None:
        return "unknown_shard", f"line {n}: shard {str(raw.get('shard'))[:80]!r} is not among --shards", row.key, raw.get("shard")
    cur = db.execute("INSERT OR IGNORE INTO rows VALUES (?, ?, ?, ?, ?)", (row.id, shard, n, row.key, row.to_json()))
    if cur.rowcount == 0:
        return "duplicate_id", f"line {n}: id {row.id[:80]!r} was seen on an earlier line", row.key, raw.get("shard")
    return None, "", row.key, None
