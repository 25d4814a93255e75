"""The hostile corpus: `make_faults(out)` (`vlmtool world OUT --faults`) writes small shards in
which every fault class a reader must survive appears, several times over, and OUT/faults.json,
the exact outcome the core must give for each (the core's contract: vlmtool/core/records.py).

faults.json:
- `read_options`: the caps the outcomes assume (the core's ReadOptions defaults);
- `outcome_of`: what the outcomes are of: a job that reads every record and decodes every image
  (inspect). A record whose `found_by` is "decode" passes a reader that only parses headers;
- `seed`, `huge_caption_bytes`: what it was made with (same seed and size, same bytes);
- `totals`: {"samples", "ok", "rejected": {reason: n}} over every shard;
- `shards`: file name -> {"samples", "ok", "rejected": {reason: n}, "fault": what the shard is,
  "records": [{"key", "expect": "ok" or a reason, "fault", "found_by": null | "tar" | "record"
  | "decode"}] in tar order (a key may repeat; a key of null is a reject of the shard itself:
  a tar that cannot be read, or breaks in a header after a complete record),
  "skipped_members": [{"name", "why"}] (members that make no record: links, folders, fifos,
  names with no extension or starting with "__")};
- `videos`: path under OUT -> {"expect": "ok" | "broken" | "not_a_video", "fault", ...truth};
- `shell_names`: shard names that are shell commands or URLs as file names; a job that reads
  the folder must read them as files and never run them (no file named `pwned_marker` appears);
- `files`: everything the corpus wrote (a rerun into OUT replaces exactly these).
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from vlmtool.world import fault_data as fd
from vlmtool.world.shapes import seeded_rng, bomb_png, make_sample

DEFAULT_HUGE_CAPTION_BYTES = 3 * fd.MiB
PWNED = "PWNED"
SHELL_NAMES = (f"pipe:touch {PWNED};cat x.tar #.tar", f"pipe:touch {PWNED}.tar", "https:x.tar", f"$(touch {PWNED}).tar",
               f"`touch {PWNED}`;.tar.gz")
GOOD_VIDEOS = ("good_0", "good_1")
BAD_VIDEOS = ("truncated.mp4", "header_only.mp4", "empty.mp4", "jpeg_named.mp4", "text_named.mp4")
VIDEO_FILES = tuple(f"videos/{v}{ext}" for v in GOOD_VIDEOS for ext in (".mp4", ".json")) + tuple(f"videos/{v}" for v in BAD_VIDEOS)
FOUND_BY = {"ok": None, "broken_tar": "tar", "duplicate_member": "tar", "duplicate_key": "tar", "member_too_large": "tar",
            "truncated_image": "decode"}


@dataclass
class Member:
    name: str
    data: bytes | fd.Repeat = b""
    kind: bytes = tarfile.REGTYPE  # or SYMTYPE, LNKTYPE, DIRTYPE, FIFOTYPE
    link: str = ""


@dataclass
class Shard:
    name: str
    fault: str
    members: list[Member] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)

    def add(self, key: str, members: list[Member], expect: str = "ok", fault: str = "", found_by: str | None = "") -> None:
        self.members += members
        self.records.append(truth(key, expect, fault, found_by))

    def skip(self, member: Member, why: str) -> None:
        self.members.append(member)
        self.skipped.append({"name": member.name, "why": why})


def truth(key: str | None, expect: str = "ok", fault: str = "", found_by: str | None = "") -> dict:
    return {"key": key, "expect": expect, "fault": fault, "found_by": FOUND_BY.get(expect, "record") if found_by == "" else found_by}


class Samples:
    """Whole shapes-world records to build faults from: each call a new sample."""

    def __init__(self, seed: int):
        self.seed, self.index = seed, 0

    def members(self, key: str, **over: bytes | fd.Repeat | None) -> list[Member]:
        """The members KEY.jpg, KEY.txt, KEY.json of a fresh sample, with `over` replacing,
        adding (EXT=bytes) or dropping (EXT=None) members, in its order. A new extension takes
        the place of the member dropped just before it (`jpg=None, png=...`), or goes before the json."""
        rec = make_sample(self.seed, self.index, sizes="small")
        self.index += 1
        parts = [["jpg", rec["jpg"]], ["txt", rec["txt"]], ["json", rec["json"]]]
        hole = None  # where a dropped member was: a new one takes its place
        for ext, data in over.items():
            at = next((i for i, (e, _) in enumerate(parts) if e == ext), None)
            if data is None and at is not None:
                del parts[at]
                hole = at
            elif at is not None:
                parts[at][1] = data
            elif data is not None:
                parts.insert(hole if hole is not None else len(parts) - 1, [ext, data])
                hole = None
        return [Member(f"{key}.{ext}", data) for ext, data in parts]


# ---------------------------------------------------------------------------------- writing tars


def write_tar(dest: io.RawIOBase, members: list[Member]) -> None:
    """Members in this order, as given (no name is cleaned), fixed times and owners."""
    with tarfile.open(fileobj=dest, mode="w|", format=tarfile.GNU_FORMAT) as tf:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.mtime, info.mode, info.type, info.linkname = 0, 0o644, m.kind, m.link
            if isinstance(m.data, fd.Repeat):
                info.size = m.data.size
                tf.addfile(info, io.BufferedReader(fd.Repeat(m.data.pattern, m.data.size), buffer_size=fd.MiB))  # from its start
            else:
                info.size = len(m.data) if m.kind == tarfile.REGTYPE else 0
                tf.addfile(info, io.BytesIO(m.data) if info.size else None)


def tar_bytes(members: list[Member]) -> bytes:
    buf = io.BytesIO()
    write_tar(buf, members)
    return buf.getvalue()


def layout(data: bytes) -> list[tuple[str, int, int, int]]:
    """(name, header offset, data offset, size) of each member of a whole tar."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [(m.name, m.offset, m.offset_data, m.size) for m in tf]


def end_of_members(data: bytes) -> int:
    """Where the end-of-archive blocks start."""
    _, _, start, size = layout(data)[-1]
    return start + -(-size // 512) * 512


def cut_inside(shard: Shard, member: str, keep: float = 0.5) -> bytes:
    """The shard's tar cut inside `member`'s data: its record is the broken_tar one, the records
    after it are gone."""
    data = tar_bytes(shard.members)
    _, _, start, size = next(m for m in layout(data) if m[0] == member)
    key = member.rsplit(".", 1)[0]
    _truncate_records(shard, key, truth(key, "broken_tar", f"the tar ends inside {member}'s data"))
    return data[: start + max(1, min(size - 1, int(size * keep)))]


def _truncate_records(shard: Shard, key: str, last: dict | None) -> None:
    at = next(i for i, r in enumerate(shard.records) if r["key"] == key)
    shard.records[at:] = [last] if last else []


# ---------------------------------------------------------------------------------- the shards


def image_shard(s: Samples, rng: np.random.Generator) -> Shard:
    sh = Shard("images.tar", "image members: truncated, corrupt, empty, bombs, and valid but unusual images")
    for i in range(2):
        sh.add(f"plain_{i}", s.members(f"plain_{i}"))
    for name, (ext, data) in fd.unusual_images(rng).items():
        sh.add(f"unusual_{name}", s.members(f"unusual_{name}", **{"jpg": None, ext: data}), fault=f"valid but unusual: {name}")
    for keep in (0.5, 0.9):
        sh.add(f"truncated_jpeg_{int(keep * 100)}", s.members(f"truncated_jpeg_{int(keep * 100)}", jpg=fd.truncated_jpeg(rng, keep)),
               "truncated_image", f"JPEG scan data cut after {keep:.0%}")
        sh.add(f"truncated_png_{int(keep * 100)}", s.members(f"truncated_png_{int(keep * 100)}", jpg=None, png=fd.truncated_png(rng, keep)),
               "truncated_image", f"PNG cut inside its IDAT after {keep:.0%}")
    corrupt = {"random_bytes": ("jpg", rng.bytes(700)), "text_as_jpeg": ("jpg", b"this is not an image\n"),
               "png_signature_then_garbage": ("png", b"\x89PNG\r\n\x1a\n" + rng.bytes(300)), "zero_byte_jpeg": ("jpg", b""),
               "zero_byte_png": ("png", b""), "zero_byte_webp": ("webp", b"")}
    for name, (ext, data) in corrupt.items():
        sh.add(f"corrupt_{name}", s.members(f"corrupt_{name}", **{"jpg": None, ext: data}), "corrupt_image", name.replace("_", " "))
    bombs = {"real_png_12000x12000": bomb_png(), "real_png_9460x9460_just_over_cap": fd.real_bomb(9460, 9460),
             "real_png_89478486x1_strip": fd.real_bomb(89_478_486, 1),
             "forged_png_header_2147483647_squared": fd.forged_png(2**31 - 1, 2**31 - 1),
             "forged_jpeg_sof_65500_squared": fd.forged_jpeg(65500, 65500)}
    for name, data in bombs.items():
        ext = "jpg" if "jpeg" in name else "png"
        sh.add(f"bomb_{name}", s.members(f"bomb_{name}", **{"jpg": None, ext: data}), "image_too_large", f"decompression bomb: {name}")
    sh.add("no_image", s.members("no_image", jpg=None), "missing_image", "no image member")
    sh.add("image_under_unknown_ext", s.members("image_under_unknown_ext", jpg=None, jpgx=b"\xff\xd8"), "missing_image",
           "the image is named .jpgx, not an image extension")
    return sh


def caption_shard(s: Samples, huge: int) -> Shard:
    from vlmtool.core.records import ReadOptions

    cap = ReadOptions().max_text_bytes
    sh = Shard("captions.tar", "caption and metadata members: missing, empty, not UTF-8, over the text cap")
    sh.add("no_caption", s.members("no_caption", txt=None), "missing_caption", "no txt member")
    sh.add("caption_under_unknown_ext", s.members("caption_under_unknown_ext", txt=None, text=b"A red circle."), "missing_caption",
           "the caption is named .text")
    for name, data in {"empty": b"", "whitespace": b"  \n\t \r\n", "nbsp_only": "\u00a0\u2003".encode()}.items():
        sh.add(f"caption_{name}", s.members(f"caption_{name}", txt=data), "empty_caption", f"caption {name}")
    for name, data in fd.bad_encodings().items():
        sh.add(f"caption_{name}", s.members(f"caption_{name}", txt=data), "bad_caption_encoding", f"caption in {name}")
    for name, data in fd.valid_odd_captions().items():
        sh.add(f"caption_ok_{name}", s.members(f"caption_ok_{name}", txt=data), fault=f"valid caption: {name}")
    sh.add("caption_ext_caption", s.members("caption_ext_caption", txt=None, caption=b"A caption under .caption."),
           fault="the caption is named .caption")
    pattern = b"a red circle to the left of a blue square. "
    sh.add("caption_exactly_at_cap", s.members("caption_exactly_at_cap", txt=fd.Repeat(pattern, cap)),
           fault=f"a caption of exactly {cap} bytes (the cap) is fine")
    sh.add("caption_one_byte_over_cap", s.members("caption_one_byte_over_cap", txt=fd.Repeat(pattern, cap + 1)),
           "member_too_large", f"a caption of {cap + 1} bytes")
    sh.add("caption_huge", s.members("caption_huge", txt=fd.Repeat(pattern, huge)), "member_too_large", f"a caption of {huge} bytes")
    sh.add("json_huge", s.members("json_huge", json=fd.Repeat(b" ", 2 * cap)), "member_too_large", f"a json member of {2 * cap} bytes")
    return sh


def metadata_shard(s: Samples) -> Shard:
    sh = Shard("metadata.tar", "json members: not JSON, or objects of the wrong type")
    for name, data in fd.bad_json().items():
        sh.add(f"json_{name}", s.members(f"json_{name}", json=data), "bad_json", name.replace("_", " "))
    for name, meta in fd.bad_metadata().items():
        sh.add(f"meta_{name}", s.members(f"meta_{name}", json=orjson.dumps(meta)), "bad_metadata", orjson.dumps(meta).decode())
    for name, meta in fd.odd_metadata().items():
        sh.add(f"meta_ok_{name}", s.members(f"meta_ok_{name}", json=orjson.dumps(meta)), fault=f"valid: {orjson.dumps(meta).decode()}")
    sh.add("no_json", s.members("no_json", json=None), fault="no json member (metadata is optional)")
    return sh


def duplicate_shards(s: Samples) -> list[Shard]:
    dm = Shard("duplicate_members.tar", "a member repeated in a row: that record is rejected, every record after it is read")
    dm.add("dm_0", s.members("dm_0"))
    for ext in ("jpg", "txt", "json"):
        members = s.members(f"dm_{ext}_twice")
        at = next(i for i, m in enumerate(members) if m.name.endswith(f".{ext}"))
        members.insert(at + 1, Member(members[at].name, members[at].data))
        dm.add(f"dm_{ext}_twice", members, "duplicate_member", f"{ext} twice in a row")
        dm.add(f"dm_after_{ext}", s.members(f"dm_after_{ext}"))
    dk = Shard("duplicate_keys.tar", "a key that appears again later in the shard: the later record is rejected")
    first = s.members("dk_a")
    dk.add("dk_a", first)
    dk.add("dk_b", s.members("dk_b"))
    dk.add("dk_a", s.members("dk_a"), "duplicate_key", "record dk_a written again after dk_b")
    split = s.members("dk_split")  # jpg, txt ... another record ... json: the json comes back as its own record
    dk.add("dk_split", split[:2], fault="its json comes later, after another record")
    dk.add("dk_between", s.members("dk_between", txt=None, json=None), "missing_caption", "only a jpg, between dk_split's members")
    dk.add("dk_split", split[2:], "duplicate_key", "dk_split's json, after another record: a second record with that key")
    dk.add("dk_c", s.members("dk_c"))
    return [dm, dk]


def odd_member_shards(s: Samples) -> list[Shard]:
    """Member names and types a reader must not trust: never extracted, never followed."""
    names = Shard("member_names.tar", "members named with .., absolute paths and folders: grouped by webdataset's base_plus_ext "
                  "(key = the name up to the first dot of its last part, folders included); nothing is extracted, and a key "
                  "that is absolute or climbs (..) is rejected: no output may carry it as a member or file name")
    for key in ("../escape", "../../../../etc/cron_d_job", "/abs/path/sample", "/tmp/vlmtool_absolute", "a/../../b"):
        names.add(key, s.members(key), "unsafe_key", f"a member named {key}.jpg: key {key!r} is absolute or climbs out")
    for key in ("./dot_slash", "sub/dir/inner"):
        names.add(key, s.members(key), fault=f"a member named {key}.jpg: read as data, key {key!r}")
    names.skip(Member("README"), "no extension: webdataset's base_plus_ext gives no key")
    names.skip(Member("__meta__.json", b"{}"), "a name starting with __ is skipped, as webdataset does")
    names.skip(Member("somedir/", kind=tarfile.DIRTYPE), "a folder: not a regular file")
    upper = [Member(m.name.rsplit(".", 1)[0] + "." + m.name.rsplit(".", 1)[1].upper(), m.data) for m in s.members("upper_ext")]
    names.add("upper_ext", upper, fault="members named .JPG, .TXT, .JSON: extensions are lower-cased")
    names.add("after_odd_names", s.members("after_odd_names"))
    links = Shard("links.tar", "symlink, hard link and fifo members: not regular files, skipped, never followed")
    links.add("link_ok", s.members("link_ok"))
    links.skip(Member("link_image.jpg", kind=tarfile.SYMTYPE, link="/etc/passwd"), "a symlink to /etc/passwd: skipped")
    links.add("link_image", s.members("link_image", jpg=None), "missing_image", "its jpg is a symlink to /etc/passwd (skipped)")
    links.skip(Member("link_caption.txt", kind=tarfile.SYMTYPE, link="../../secret.txt"), "a symlink out of the folder: skipped")
    links.add("link_caption", s.members("link_caption", txt=None), "missing_caption", "its txt is a symlink (skipped)")
    links.skip(Member("hard_image.jpg", kind=tarfile.LNKTYPE, link="link_ok.jpg"), "a hard link: skipped")
    links.add("hard_image", s.members("hard_image", jpg=None), "missing_image", "its jpg is a hard link to link_ok.jpg (skipped)")
    links.skip(Member("fifo_image.jpg", kind=tarfile.FIFOTYPE), "a fifo: skipped")
    links.add("fifo_image", s.members("fifo_image", jpg=None), "missing_image", "its jpg is a fifo (skipped)")
    links.skip(Member("lonely_link.jpg", kind=tarfile.SYMTYPE, link="/dev/zero"), "a symlink with no record: nothing")
    links.add("after_links", s.members("after_links"))
    return [names, links]


def cut_shards(s: Samples) -> list[tuple[Shard, bytes]]:
    """Tars cut short: inside a member's data (that record is the broken_tar one), inside a
    header after a complete record (a broken_tar naming the record whose header was cut, when the
    header's name field survives; else no key), and a gzip stream cut short."""
    out = []
    for name, member, keep in (("cut_in_image.tar", "cut_2.jpg", 0.5), ("cut_in_json.tar", "cut_3.json", 0.3)):
        sh = Shard(name, f"the tar ends inside {member}'s data")
        for i in range(5):
            sh.add(f"cut_{i}", s.members(f"cut_{i}"))
        out.append((sh, cut_inside(sh, member, keep)))
    for name, nbytes in (("cut_in_header.tar", 100), ("cut_in_header_1_byte.tar", 1)):
        sh = Shard(name, f"the tar ends {nbytes} bytes into the header after a complete record")
        for i in range(4):
            sh.add(f"hdr_{i}", s.members(f"hdr_{i}"))
        data = tar_bytes(sh.members)
        _, header_at, _, _ = next(m for m in layout(data) if m[0].startswith("hdr_2."))
        named = "hdr_2" if nbytes >= 100 else None  # the name field is the header's first 100 bytes
        _truncate_records(sh, "hdr_2", truth(named, "broken_tar", "the tar ends inside the header after record hdr_1"))
        out.append((sh, data[: header_at + nbytes]))
    out.append(gzip_cut(s))
    return out


def overdeclared_member_tar(s: Samples, declared: int = 1 << 62) -> bytes:
    """Record `a`, then `b.txt` whose header declares `declared` bytes (over the text cap, so a
    reader skips it) while the file ends 100 bytes later: `b` must be rejected and the shard end
    at once. Not in the corpus while the core reads on for as long as the header claims (time
    linear in the declared size: about 0.25 s per GiB here, so 2^62 bytes never ends)."""
    data = tar_bytes(s.members("a") + s.members("b"))
    _, at, _, _ = next(m for m in layout(data) if m[0] == "b.txt")
    info = tarfile.TarInfo("b.txt")
    info.size, info.mtime, info.mode = declared, 0, 0o644
    return data[:at] + info.tobuf(tarfile.GNU_FORMAT) + b"x" * 100


def gzip_cut(s: Samples) -> tuple[Shard, bytes]:
    """A .tar.gz cut short: the record whose data the readable part of the stream ends in is
    the broken_tar one."""
    sh = Shard("cut_gzip.tar.gz", "a gzip-compressed tar cut short: the stream ends inside a member's data")
    rng = seeded_rng(s.seed, 9, 1)
    for i in range(4):  # noise images: the compressed stream advances with the tar
        sh.add(f"gzcut_{i}", s.members(f"gzcut_{i}", jpg=fd._save(fd.noise_image(rng, (128, 128)), "PNG")))
    data = tar_bytes(sh.members)
    packed = gzip.compress(data, mtime=0)
    for cut in range(len(packed) // 2, 0, -97):
        got = len(zlib.decompressobj(31).decompress(packed[:cut]))
        hit = next((m for m in layout(data) if m[2] < got < m[2] + m[3]), None)
        if hit:
            key = hit[0].rsplit(".", 1)[0]
            _truncate_records(sh, key, truth(key, "broken_tar", f"the gzip stream ends inside {hit[0]}'s data"))
            return sh, packed[:cut]
    raise AssertionError("no cut inside a member")  # pragma: no cover - the noise images make one


def whole_file_shards(s: Samples, rng: np.random.Generator) -> list[tuple[Shard, bytes]]:
    """Shards whose fault is the file itself: not a tar, empty, garbage after or in place of the
    end, compressed."""
    out = []
    not_tars = {"not_a_tar_random.tar": rng.bytes(3000), "not_a_tar_text.tar": b"hello, I am a text file\n",
                "not_a_tar_jpeg.tar": fd._save(fd.noise_image(rng), "JPEG"), "zero_bytes.tar": b""}
    for name, data in not_tars.items():
        out.append((Shard(name, f"{name}: not a tar", records=[truth(None, "broken_tar", "not a readable tar")]), data))
    out.append((Shard("empty_archive.tar", "a valid tar with no members (only the end-of-archive blocks): no records"), tar_bytes([])))
    after = Shard("garbage_after_end.tar", "random bytes after the end-of-archive blocks: ignored, every record read")
    for i in range(3):
        after.add(f"gend_{i}", s.members(f"gend_{i}"))
    out.append((after, tar_bytes(after.members) + rng.bytes(5000)))
    instead = Shard("garbage_instead_of_end.tar", "random bytes where the end-of-archive blocks should be: a broken_tar with no key")
    for i in range(3):
        instead.add(f"gbad_{i}", s.members(f"gbad_{i}"))
    data = tar_bytes(instead.members)
    instead.records.append(truth(None, "broken_tar", "a garbage header after the last complete record"))
    out.append((instead, data[: end_of_members(data)] + b"\x01" + rng.bytes(2047)))
    for name in ("gzipped.tar.gz", "gzipped.tgz", "gzipped_named_plain.tar"):
        sh = Shard(name, "a gzip-compressed tar: read like any other")
        for i in range(3):
            sh.add(f"gz_{name.split('.')[0]}_{i}", s.members(f"gz_{name.split('.')[0]}_{i}"))
        out.append((sh, gzip.compress(tar_bytes(sh.members), mtime=0)))
    return out


def name_shards(s: Samples) -> list[tuple[Shard, bytes]]:
    """Valid shards whose file names are shell commands or URLs: files, to be read as files."""
    out = []
    for i, name in enumerate(SHELL_NAMES):
        sh = Shard(name, "a shard whose name is a shell command or a URL: a plain local file")
        for j in range(2):
            sh.add(f"name_{i}_{j}", s.members(f"name_{i}_{j}"))
        data = tar_bytes(sh.members)
        out.append((sh, gzip.compress(data, mtime=0) if name.endswith(".gz") else data))
    return out


def video_files(out: Path, seed: int) -> dict[str, dict]:
    """videos/: good short videos, and beside them a truncated mp4, an empty one and files that
    are not videos at all under .mp4 names."""
    from vlmtool.core.shards import atomic_write, write_json
    from vlmtool.world.shapes import make_video

    truth_of: dict[str, dict] = {}
    for v, stem in enumerate(GOOD_VIDEOS):
        p = out / "videos" / f"{stem}.mp4"
        truth_of[f"videos/{p.name}"] = {"expect": "ok", "fault": "", **make_video(p, seed, v, seconds=3.0, segment_s=1.5)}
        write_json(p.with_suffix(".json"), truth_of[f"videos/{p.name}"])
    good = (out / "videos" / "good_0.mp4").read_bytes()
    bad = {"truncated.mp4": ("broken", good[: len(good) // 2], f"good_0.mp4 cut after {len(good) // 2} of {len(good)} bytes"),
           "header_only.mp4": ("broken", good[:64], "the first 64 bytes of good_0.mp4"),
           "empty.mp4": ("not_a_video", b"", "zero bytes"),
           "jpeg_named.mp4": ("not_a_video", fd._save(fd.noise_image(seeded_rng(seed, 9, 2)), "JPEG"), "a JPEG image"),
           "text_named.mp4": ("not_a_video", b"#!/bin/sh\necho not a video\n", "a shell script")}
    assert tuple(bad) == BAD_VIDEOS
    for name, (expect, data, fault) in bad.items():
        atomic_write(out / "videos" / name, data)
        truth_of[f"videos/{name}"] = {"expect": expect, "fault": fault}
    return truth_of


def _count(records: list[dict]) -> dict:
    rejected = Counter(r["expect"] for r in records if r["expect"] != "ok")
    return {"samples": len(records), "ok": len(records) - rejected.total(), "rejected": dict(sorted(rejected.items()))}


def make_faults(out: str | Path, seed: int = 0, huge_caption_bytes: int = DEFAULT_HUGE_CAPTION_BYTES) -> dict:
    """Write the hostile corpus into OUT (new, empty, or an earlier world's or corpus's folder,
    which it replaces) and OUT/faults.json, its truth (see the module's docstring)."""
    from vlmtool.core.records import ReadOptions
    from vlmtool.core.shards import atomic_path, atomic_write, write_json
    from vlmtool.errors import UsageError
    from vlmtool.world.folder import claim_folder, release_folder

    read = ReadOptions()
    if huge_caption_bytes <= read.max_text_bytes:
        raise UsageError(f"--huge-caption-bytes must be over the text cap ({read.max_text_bytes} bytes) to be a fault")
    s, rng = Samples(seed), seeded_rng(seed, 9, 0)
    tars = [image_shard(s, rng), caption_shard(s, huge_caption_bytes), metadata_shard(s), *duplicate_shards(s), *odd_member_shards(s)]
    written = [*cut_shards(s), *whole_file_shards(s, rng), *name_shards(s)]
    files = sorted([sh.name for sh in tars] + [sh.name for sh, _ in written] + list(VIDEO_FILES) + ["faults.json"])
    out = claim_folder(out, files)
    for sh in tars:
        with atomic_path(out / sh.name) as tmp, open(tmp, "wb") as f:
            write_tar(f, sh.members)
    for sh, data in written:
        atomic_write(out / sh.name, data)
    videos = video_files(out, seed)
    shards = {sh.name: {**_count(sh.records), "fault": sh.fault, "records": sh.records, "skipped_members": sh.skipped}
              for sh in [*tars, *(sh for sh, _ in written)]}
    records = [r for sh in shards.values() for r in sh["records"]]
    summary = {"seed": seed, "huge_caption_bytes": huge_caption_bytes,
               "read_options": {k: getattr(read, k) for k in ("max_pixels", "max_image_bytes", "max_text_bytes", "max_member_bytes")},
               "outcome_of": "a job that reads every record and decodes every image (inspect); a record found_by 'decode' "
                             "passes a reader that parses headers only",
               "totals": _count(records), "shards": dict(sorted(shards.items())), "videos": videos,
               "shell_names": list(SHELL_NAMES), "pwned_marker": PWNED,
               "files": files}
    write_json(out / "faults.json", summary)
    release_folder(out)
    return {"out": str(out), **summary}
