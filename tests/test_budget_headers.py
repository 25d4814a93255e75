"""The fast header paths agree with PIL and tarfile, and hand anything unusual back to them."""

import io
import tarfile

import pytest
from conftest import FIXTURES
from PIL import Image

from vlmtool.budget.dataset import iter_items
from vlmtool.budget.headers import fast_size
from vlmtool.core.tarscan import Fallback, tar_members


def _encode(size, fmt, **kw):
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("size", [(1, 1), (17, 5), (640, 480), (3000, 20)])
@pytest.mark.parametrize("fmt, kw", [("JPEG", {}), ("JPEG", {"progressive": True}), ("JPEG", {"exif": b"Exif\x00\x00" + b"x" * 5000}),
                                     ("PNG", {})])
def test_fast_size_equals_pil(size, fmt, kw):
    data = _encode(size, fmt, **kw)
    assert fast_size(data) == Image.open(io.BytesIO(data)).size == size


def test_unknown_formats_are_left_to_pil():
    assert fast_size(_encode((20, 10), "WEBP")) is None
    assert fast_size(b"\xff\xd8\xff\xda" + b"\0" * 20) is None  # scan before any frame header
    assert fast_size(b"garbage") is None


def test_tar_fast_path_matches_tarfile():
    shard = FIXTURES / "shapes" / "00000.tar"
    fast = [(name, bytes(data)) for name, data in tar_members(str(shard))]
    with tarfile.open(shard) as tf:
        slow = [(m.name, tf.extractfile(m).read()) for m in tf if m.isfile()]
    assert fast == slow


def test_long_names_and_truncation_fall_back(tmp_path):
    long = tmp_path / "long.tar"
    with tarfile.open(long, "w", format=tarfile.GNU_FORMAT) as tf:
        data = _encode((30, 20), "JPEG")
        info = tarfile.TarInfo("d" * 120 + ".jpg")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    with pytest.raises(Fallback):
        list(tar_members(str(long)))
    items = list(iter_items([str(long)]))
    assert [(i.width, i.height, i.error) for i in items] == [(30, 20, None)]

    cut = tmp_path / "cut.tar"
    raw = (FIXTURES / "shapes" / "00000.tar").read_bytes()
    cut.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(Fallback):
        list(tar_members(str(cut)))
    items = list(iter_items([str(cut)]))
    assert items[-1].error and "tar" in items[-1].error
    assert sum(1 for i in items if not i.error) >= 5
