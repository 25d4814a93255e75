"""Image sizes at disk speed: JPEG and PNG sizes parsed from their first bytes, tar members
located from their 512-byte headers over a memory map.

These are fast paths, not replacements: anything they do not recognise (another image format,
a JPEG whose size marker they cannot find, a tar with pax or GNU long-name headers, a
truncated tar) returns None or raises Fallback, and the caller uses PIL or tarfile, which
give the authoritative answer and the error message.
"""

from __future__ import annotations

import mmap
import struct
from typing import Iterator

# JPEG start-of-frame markers (ITU T.81 table B.1): SOF0-SOF15 except DHT (C4), JPG (C8), DAC (CC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_ZERO_BLOCK = bytes(512)
_REGULAR_OR_DIR = (0x30, 0x00, 0x35)  # "0", NUL (old regular file), "5"


class Fallback(Exception):
    """The fast path cannot read this input; use the general one."""


def jpeg_size(buf) -> tuple[int, int] | None:
    if len(buf) < 4 or buf[0] != 0xFF or buf[1] != 0xD8:
        return None
    i, n = 2, len(buf)
    while i + 9 < n:
        if buf[i] != 0xFF:
            return None
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        seg_len = (buf[i + 2] << 8) | buf[i + 3]
        if marker in _SOF:
            h = (buf[i + 5] << 8) | buf[i + 6]
            w = (buf[i + 7] << 8) | buf[i + 8]
            return (w, h) if w and h else None
        if marker == 0xDA or seg_len < 2:  # start of scan before any frame header: not for us
            return None
        i += 2 + seg_len
    return None


def png_size(buf) -> tuple[int, int] | None:
    if len(buf) >= 24 and bytes(buf[:8]) == _PNG_SIG and bytes(buf[12:16]) == b"IHDR":
        w, h = struct.unpack(">II", buf[16:24])
        return (w, h) if w and h else None
    return None


def fast_size(buf) -> tuple[int, int] | None:
    return jpeg_size(buf) or png_size(buf)


def _octal(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256 for large sizes
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    s = field.split(b"\0", 1)[0].strip()
    return int(s, 8) if s else 0


def tar_members(path: str) -> Iterator[tuple[str, memoryview]]:
    """(name, data) of each regular file of a plain ustar tar, without copying the data.

    Raises Fallback for anything but plain ustar/v7 regular files and directories, and for a
    truncated file, before yielding anything: the caller then reads it with tarfile.
    """
    with open(path, "rb") as f:
        try:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # empty file
            raise Fallback("empty") from None
    view = memoryview(mm)
    members: list[tuple[str, int, int]] = []
    try:
        pos, size = 0, len(mm)
        while pos + 512 <= size:
            if mm[pos] == 0 and mm[pos : pos + 512] == _ZERO_BLOCK:  # end of archive
                break
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
                if mm[pos + 345] and mm[pos + 257 : pos + 263] == b"ustar\0":
                    name = mm[pos + 345 : pos + 500].split(b"\0", 1)[0] + b"/" + name
                members.append((name.decode("utf-8", "surrogateescape"), start, length))
            pos = start + (length + 511) // 512 * 512
        else:
            if pos < size:
                raise Fallback("truncated header")
        for name, start, length in members:
            yield name, view[start : start + length]
    finally:
        del view
        try:
            mm.close()
        except BufferError:  # a caller still holds a slice; the map closes when it is dropped
            pass
