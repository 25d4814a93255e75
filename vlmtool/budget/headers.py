"""Image sizes at disk speed: JPEG and PNG sizes parsed from their first bytes (tar members
come from vlmtool.core.tarscan, over a memory map).

These are fast paths, not replacements: anything they do not recognise (another image format,
a JPEG whose size marker they cannot find, a tar with pax or GNU long-name headers, a
truncated tar) returns None or raises Fallback, and the caller uses PIL or tarfile, which
give the authoritative answer and the error message.
"""

from __future__ import annotations

import struct

# JPEG start-of-frame markers (ITU T.81 table B.1): SOF0-SOF15 except DHT (C4), JPG (C8), DAC (CC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PNG_SIG = b"\x89PNG\r\n\x1a\n"


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
