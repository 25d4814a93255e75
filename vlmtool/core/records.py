"""The one record stream: a shard in, its records out, each one a Sample or a Reject with a reason.

This is the only place the project reads shard tars and turns their faults into rejects; every
job (inspect, filter, synth, clip-train, encode, train) consumes it. The contract, which
docs/architecture.md spells out:
- every record of a shard comes out exactly once, in tar order, as a Sample or a Reject;
- a tar that breaks ends the shard with one `broken_tar` Reject naming the record that was being
  read (or no key, when the break is in the header after a complete record), after every record
  before the break;
- a member repeated in a row, a key seen earlier in the shard, a member over its size cap are
  rejects of that record, and reading goes on;
- no member is read into memory past its cap (ReadOptions), whatever its header claims.
Members are grouped into records by webdataset's own key rule (`base_plus_ext`: the name up to
the first dot of its last path part is the key, the rest the lower-cased extension).
"""

from __future__ import annotations

import tarfile
import zlib
from dataclasses import dataclass
from typing import Iterator

from vlmtool.core.options import MAX_IMAGE_BYTES, MAX_PIXELS, MAX_TEXT_BYTES, MiB
from vlmtool.core.samples import CAPTION_EXTS, IMAGE_EXTS, Sample, SampleError, clean_detail, parse_record
from vlmtool.core.shards import ShardRef, open_input
from vlmtool.errors import JobFailed

TEXT_EXTS = CAPTION_EXTS + ("json",)


@dataclass(frozen=True)
class ReadOptions:
    """Caps on what a record may hold; each is a job option (the excess is a reject reason)."""

    max_pixels: int = MAX_PIXELS()  # decoded pixels of an image (decompression bombs)
    max_image_bytes: int = MAX_IMAGE_BYTES()  # an image member
    max_text_bytes: int = MAX_TEXT_BYTES()  # a caption or json member
    max_member_bytes: int = 512 * MiB  # any other member (videos, audio, features)

    @classmethod
    def of(cls, opts) -> ReadOptions:
        """The caps a job's options object sets (fields of the same names); the rest default."""
        import dataclasses

        return cls(**{f.name: getattr(opts, f.name) for f in dataclasses.fields(cls) if hasattr(opts, f.name)})

    def cap(self, ext: str) -> int:
        if ext in IMAGE_EXTS:
            return self.max_image_bytes
        if ext in TEXT_EXTS:
            return self.max_text_bytes
        return self.max_member_bytes


@dataclass(frozen=True)
class Reject:
    shard: str
    key: str | None
    reason: str
    detail: str = ""

    def __post_init__(self):
        object.__setattr__(self, "detail", clean_detail(self.detail))

    def row(self) -> dict:
        return {"shard": self.shard, "key": self.key, "reason": self.reason, "detail": self.detail}

    def strict_error(self, url: str) -> JobFailed:
        """What --strict stops with at this reject (`url`: its shard as the user gave it)."""
        return JobFailed(f"--strict: sample {self.key!r} of shard {url} rejected: {self.reason}" + (f" ({self.detail})" if self.detail else ""))


class _Info(tarfile.TarInfo):
    """Remembers why tarfile stopped, and the header block it could not read: a zero block is
    the end of the archive; a header cut short or garbage is a broken tar (tarfile itself
    treats both as a quiet end). The same steps as TarInfo.fromtarfile, keeping the block."""

    @classmethod
    def fromtarfile(cls, tf):
        buf = tf.fileobj.read(tarfile.BLOCKSIZE)
        try:
            obj = cls.frombuf(buf, tf.encoding, tf.errors)
        except tarfile.HeaderError as e:
            tf.vlm_stop = (e, buf)
            raise
        obj.offset = tf.fileobj.tell() - tarfile.BLOCKSIZE
        return obj._proc_member(tf)


def _cut_header_key(buf: bytes) -> str | None:
    """The record key named by a header block that was cut short (its name field survives in
    the first 100 bytes), or None."""
    if len(buf) < 100:
        return None
    name = buf[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
    return split_member_name(name)[0] if name else None


_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, ValueError)


def unsafe_key(key: str) -> bool:
    """A key no output may carry as a member or file name: absolute (`/x`, `C:x`, `\\x`), with a
    `..` component, or holding a NUL or a backslash (a Windows separator)."""
    parts = key.split("/")
    return key.startswith("/") or ".." in parts or "\x00" in key or "\\" in key or (len(key) > 1 and key[1] == ":")


def split_member_name(name: str) -> tuple[str | None, str | None]:
    from webdataset.tariterators import base_plus_ext

    return base_plus_ext(name)


def tar_records(ref: ShardRef, read: ReadOptions = ReadOptions()) -> Iterator[dict | Reject]:
    """The raw records of one shard ({"__key__", "__url__", EXT: bytes, ...}) in tar order, and
    Rejects for records that cannot be whole (see the module's contract)."""
    try:
        f = open_input(ref.url)
    except Exception as e:
        yield Reject(ref.name, None, "broken_tar", f"cannot open: {type(e).__name__}: {e}")
        return
    broke = False
    try:
        for rec in _records(f, ref, read):
            broke = broke or isinstance(rec, Reject) and rec.reason == "broken_tar"
            yield rec
    except BaseException:
        _close_quietly(f)
        raise
    try:
        f.close()
    except Exception as e:  # a failing pipe: command reports here (once: the shard may have said so already)
        if not broke:
            yield Reject(ref.name, None, "broken_tar", f"the input stream failed: {type(e).__name__}: {e}")


def _close_quietly(f) -> None:
    try:
        f.close()
    except Exception:  # the stream's own failure is not the one being raised
        pass


def _records(f, ref: ShardRef, read: ReadOptions) -> Iterator[dict | Reject]:
    try:
        tf = tarfile.open(fileobj=f, mode="r|*", tarinfo=_Info)
    except _READ_ERRORS as e:
        yield Reject(ref.name, None, "broken_tar", f"not a readable tar: {type(e).__name__}: {e}")
        return
    cur: dict | None = None  # the record being assembled
    faults: list[tuple[str, str]] = []  # (reason, detail) of the record being assembled
    seen: set[str] = set()

    def close_record():
        if cur is None:
            return None
        if faults:
            return Reject(ref.name, cur["__key__"], *faults[0])
        return cur

    while True:
        try:
            info = tf.next()
        except _READ_ERRORS as e:
            if cur is not None:
                yield close_record()
            yield Reject(ref.name, None, "broken_tar", _where(e, cur))
            return
        tf.members = []  # tarfile keeps every header it read; a shard's worth adds up
        if info is None:
            yield from _end(tf, ref, cur, close_record)
            return
        if not info.isreg():
            continue  # directories, links: nothing to read (a link is never followed)
        key, ext = split_member_name(info.name)
        if key is None or info.name.rsplit("/", 1)[-1].startswith("__"):
            continue  # names webdataset skips as well
        ext = ext.lower()
        if cur is None or cur["__key__"] != key:
            if cur is not None:
                yield close_record()
            cur, faults = {"__key__": key, "__url__": ref.url}, []
            if key in seen:
                faults.append(("duplicate_key", f"key {key!r} appears earlier in the shard"))
            elif unsafe_key(key):
                faults.append(("unsafe_key", f"key {key[:80]!r} is absolute or climbs out of its folder"))
            seen.add(key)
        keep = True
        if ext in cur:
            faults.append(("duplicate_member", f"member {info.name!r} repeated"))
            keep = False
        elif info.size > read.cap(ext):
            faults.append(("member_too_large", f"{info.name}: {info.size} bytes > cap {read.cap(ext)}"))
            keep = False
        data, err = _read_member(tf, info, keep)
        if err is not None:
            yield Reject(ref.name, key, "broken_tar", f"{info.name}: {err}")
            return
        if keep:
            cur[ext] = data


_CHUNK = 1 << 20


def _read_member(tf, info, keep: bool) -> tuple[bytes | None, str | None]:
    """A member's data (or, not kept, read through and dropped in 1 MiB chunks: tarfile's own
    skip would trust the declared size and read on for as long as the header claims), or the
    reason the tar ended inside it."""
    try:
        f = tf.extractfile(info)
        if keep:
            data = f.read()
        else:
            data, n = None, 0
            while True:
                chunk = f.read(_CHUNK)
                if not chunk:
                    break
                n += len(chunk)
            if n != info.size:
                return None, f"the tar ends after {n} of {info.size} bytes"
    except _READ_ERRORS as e:
        return None, f"{type(e).__name__}: {e}"
    if keep and len(data) != info.size:
        return None, f"the tar ends after {len(data)} of {info.size} bytes"
    return data, None


def _end(tf, ref: ShardRef, cur: dict | None, close_record) -> Iterator[dict | Reject]:
    """The end of the members: the archive's end, or a header tarfile could not read. A header
    cut short that still names the record being assembled means that record is not whole."""
    stop, buf = getattr(tf, "vlm_stop", (None, b""))
    if stop is None or isinstance(stop, (tarfile.EOFHeaderError, tarfile.EmptyHeaderError)):
        if cur is not None:
            yield close_record()
        return
    key = _cut_header_key(buf) if isinstance(stop, tarfile.TruncatedHeaderError) else None
    what = f"a tar header is cut short or garbage ({type(stop).__name__})"
    if cur is not None and key == cur["__key__"]:
        yield Reject(ref.name, key, "broken_tar", f"{what} inside record {key!r}")
        return
    if cur is not None:
        yield close_record()
    yield Reject(ref.name, key, "broken_tar", what + (f" after record {cur['__key__']!r}" if cur is not None else ""))


def _where(e: Exception, cur: dict | None) -> str:
    after = f" after record {cur['__key__']!r}" if cur is not None else ""
    return f"the tar breaks{after}: {type(e).__name__}: {e}"


def iter_samples(ref: ShardRef, read: ReadOptions = ReadOptions(), objects_field: str | None = "objects") -> Iterator[Sample | Reject]:
    """Parsed samples of one shard (image header read, caption and metadata checked, no pixel
    decoding) and Rejects, one per record, in tar order."""
    for rec in tar_records(ref, read):
        if isinstance(rec, Reject):
            yield rec
            continue
        try:
            yield parse_record(rec, ref.name, read.max_pixels, objects_field=objects_field)
        except SampleError as e:
            yield Reject(ref.name, rec["__key__"], e.reason, e.detail)
