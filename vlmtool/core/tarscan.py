"""Plain ustar tars read over a memory map: member offsets from their 512-byte headers.

A fast path beside tarfile, used where only member boundaries are needed (image headers for
budget, whole-record copies for filter's select pass). Anything it does not recognise (pax or
GNU long-name headers, links, a truncated file) raises Fallback before any result is given,
and the caller uses tarfile or webdataset, which give the authoritative answer.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from typing import Iterator

_ZERO_BLOCK = bytes(512)
_REGULAR_OR_DIR = (0x30, 0x00, 0x35)  # "0", NUL (old regular file), "5"


class Fallback(Exception):
    """The fast path cannot read this input; use the general one."""


@dataclass(slots=True)
class Member:
    name: str
    header: int  # offset of the member's header block
    data: int  # offset of its data
    size: int

    @property
    def end(self) -> int:  # the offset after its data, padded to a block
        return self.data + (self.size + 511) // 512 * 512


def _octal(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256 for large sizes
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    s = field.split(b"\0", 1)[0].strip()
    return int(s, 8) if s else 0


def open_map(path: str) -> mmap.mmap:
    with open(path, "rb") as f:
        try:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # empty file
            raise Fallback("empty") from None


def scan(mm, suffixes: tuple[bytes, ...] | None = None) -> list[Member]:
    """The regular-file members of a plain ustar tar, in order (only names ending with one of
    `suffixes`, lower-cased, when given); Fallback for anything else."""
    members: list[Member] = []
    pos, size = 0, len(mm)
    while pos + 512 <= size:
        if mm[pos] == 0 and mm[pos : pos + 512] == _ZERO_BLOCK:  # end of archive
            return members
        typeflag = mm[pos + 156]
        if typeflag not in _REGULAR_OR_DIR:
            raise Fallback(f"tar header type {chr(typeflag)!r}")
        if mm[pos + 257 : pos + 262] != b"ustar":  # POSIX ustar or GNU: anything else goes to tarfile
            raise Fallback("not a ustar header")
        try:
            length = int(mm[pos + 124 : pos + 135], 8)  # 11 octal digits, the common case
        except ValueError:
            try:
                length = _octal(mm[pos + 124 : pos + 136])  # NUL-padded or base-256
            except ValueError:
                raise Fallback("bad size field") from None
        start = pos + 512
        if start + length > size:
            raise Fallback("truncated")
        if typeflag != 0x35:  # "5": a directory
            name = mm[pos : pos + 100].split(b"\0", 1)[0]
            if suffixes is None or name.lower().endswith(suffixes):
                if mm[pos + 345] and mm[pos + 257 : pos + 263] == b"ustar\0":
                    name = mm[pos + 345 : pos + 500].split(b"\0", 1)[0] + b"/" + name
                members.append(Member(name.decode("utf-8", "surrogateescape"), pos, start, length))
        pos = start + (length + 511) // 512 * 512
    if pos < size:
        raise Fallback("truncated header")
    return members


def tar_members(path: str, suffixes: tuple[str, ...] | None = None) -> Iterator[tuple[str, memoryview]]:
    """(name, data) of each regular file (whose name ends with one of `suffixes`), without
    copying the data; Fallback (before anything is yielded) when the fast path cannot read it."""
    mm = open_map(path)
    members = scan(mm, tuple(x.encode() for x in suffixes) if suffixes else None)
    view = memoryview(mm)
    try:
        for m in members:
            yield m.name, view[m.data : m.data + m.size]
    finally:
        del view
        try:
            mm.close()
        except BufferError:  # a caller still holds a slice; the map closes when it is dropped
            pass
