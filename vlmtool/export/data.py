"""The export formats: one writer class per format behind a small registry (FORMATS).

A writer owns one input shard's output unit: it is opened when the shard starts (removing what a
killed run of that shard left), takes the shard's joined rows with their original image bytes
(`add`), and `commit()` puts the unit in place whole; only then is the shard's completion record
written. `finalize` runs once every shard is done and writes what spans shards (LLaVA's single
JSON list, LLaMA-Factory's dataset_info.json).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from vlmtool.core.shards import ShardTarWriter, atomic_path, dumps, write_json
from vlmtool.export.rows import IMAGE, Row

PER_FOLDER = 1000  # images in one folder of an image tree: images/SHARD/NNNN/KEY.EXT
# datasets' own row group for image datasets (datasets/config.py PARQUET_ROW_GROUP_SIZE_FOR_IMAGE_DATASETS)
PARQUET_ROW_GROUP = 100


def llava_conversations(turns) -> list[dict]:
    """LLaVA's conversation schema (haotian-liu/LLaVA llava/train/train.py, LazySupervisedDataset
    and preprocess): `from` human/gpt alternating, `<image>` once, at the start of the first
    human turn."""
    conv = []
    for i, (user, answer) in enumerate(turns):
        conv.append({"from": "human", "value": f"{IMAGE}\n{user}" if i == 0 else user})
        conv.append({"from": "gpt", "value": answer})
    return conv


def chat_messages(turns) -> list[dict]:
    """The chat format transformers' processors and TRL read: `role` and `content` parts of type
    `image` (one, in the first user turn) and `text`."""
    msgs = []
    for i, (user, answer) in enumerate(turns):
        parts = ([{"type": "image"}] if i == 0 else []) + [{"type": "text", "text": user}]
        msgs.append({"role": "user", "content": parts})
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return msgs


def sharegpt_messages(turns) -> list[dict]:
    """LLaMA-Factory's multimodal sharegpt messages (data/README.md, mllm_demo.json): `<image>`
    in the text, as many as the row has images."""
    msgs = []
    for i, (user, answer) in enumerate(turns):
        msgs.append({"role": "user", "content": f"{IMAGE}{user}" if i == 0 else user})
        msgs.append({"role": "assistant", "content": answer})
    return msgs


class ImageFolder:
    """One shard's images, original bytes, under a partial folder renamed into place at commit:
    ROOT/SHARD/NNNN/KEY.EXT, at most PER_FOLDER images a folder."""

    def __init__(self, root: Path, shard: str):
        self.final, self.tmp = root / shard, root / f".{shard}.partial"
        shutil.rmtree(self.tmp, ignore_errors=True)  # a killed run's
        self.shard, self.n = shard, 0

    def put(self, name: str, ext: str, data: bytes) -> str:
        """Write an image; its path relative to ROOT."""
        sub = f"{self.n // PER_FOLDER:04d}"
        self.n += 1
        folder = self.tmp / sub
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{name}.{ext}", "wb") as f:
            f.write(data)
        return f"{self.shard}/{sub}/{name}.{ext}"

    def commit(self) -> None:
        shutil.rmtree(self.final, ignore_errors=True)  # a killed commit's: the shard has no record yet
        if self.n:
            os.replace(self.tmp, self.final)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class Lines:
    """A JSON-lines file written under a temporary name, renamed at commit (absent when empty)."""

    def __init__(self, final: Path):
        self.final, self.n = final, 0
        self._ctx = atomic_path(final)
        self._file = open(self._ctx.__enter__(), "wb")

    def write(self, obj) -> None:
        self._file.write(dumps(obj) + b"\n")
        self.n += 1

    def commit(self) -> None:
        self._file.close()
        if self.n:
            self._ctx.__exit__(None, None, None)
        else:
            self.abort()
            self.final.unlink(missing_ok=True)

    def abort(self) -> None:
        self._file.close()
        self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)


class Writer:
    """One shard's output unit of a format (see the module's docstring)."""

    name = ""
    needs: str | None = None  # the extra a format needs beyond the base install

    def __init__(self, out: Path, shard: str, opts):
        self.out, self.shard, self.opts = out, shard, opts

    def add(self, row: Row, name: str, ext: str, image: bytes, first: bool) -> None:
        """A joined row; `name` is the image's file-safe key, `first` whether the image was not
        given to this shard's writer before (several rows may share one image)."""
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    @classmethod
    def finalize(cls, out: Path, shards: list[str], opts) -> dict:
        """What spans the shards, once every shard is done; the layout's entry points."""
        return {}


class LlavaWriter(Writer):
    """LLaVA: `llava.json` (a JSON list, `--data_path`) and `images/` (`--image_folder`)."""

    name = "llava"

    def __init__(self, out: Path, shard: str, opts):
        super().__init__(out, shard, opts)
        self.images = ImageFolder(out / "images", shard)
        self.part = Lines(out / "_state" / "llava-parts" / f"{shard}.jsonl")
        self.paths: dict[str, str] = {}

    def add(self, row: Row, name: str, ext: str, image: bytes, first: bool) -> None:
        if first:
            self.paths[name] = self.images.put(name, ext, image)
        self.part.write({"id": row.id, "image": self.paths[name], "conversations": llava_conversations(row.turns)})

    def commit(self) -> None:
        self.images.commit()
        self.part.commit()

    def abort(self) -> None:
        self.images.abort()
        self.part.abort()

    @classmethod
    def finalize(cls, out: Path, shards: list[str], opts) -> dict:
        """llava.json assembled from the shards' parts, streamed (never the whole list in memory)."""
        parts = out / "_state" / "llava-parts"
        first = True
        with atomic_path(out / "llava.json") as tmp, open(tmp, "wb") as f:
            f.write(b"[")
            for shard in shards:
                p = parts / f"{shard}.jsonl"
                if not p.exists():
                    continue
                with open(p, "rb") as src:
                    for line in src:
                        f.write((b"\n" if first else b",\n") + line.rstrip(b"\n"))
                        first = False
            f.write(b"\n]\n")
        return {"data_path": str(out / "llava.json"), "image_folder": str(out / "images")}


class ShareGPTWriter(Writer):
    """LLaMA-Factory's multimodal sharegpt: `data/SHARD.jsonl` rows of `messages` and `images`
    (paths relative to the dataset folder), `images/`, and `dataset_info.json` registering it."""

    name = "sharegpt"

    def __init__(self, out: Path, shard: str, opts):
        super().__init__(out, shard, opts)
        self.images = ImageFolder(out / "images", shard)
        self.part = Lines(out / "data" / f"{shard}.jsonl")
        self.paths: dict[str, str] = {}

    def add(self, row: Row, name: str, ext: str, image: bytes, first: bool) -> None:
        if first:
            self.paths[name] = "images/" + self.images.put(name, ext, image)
        self.part.write({"messages": sharegpt_messages(row.turns), "images": [self.paths[name]], "id": row.id})

    commit = LlavaWriter.commit
    abort = LlavaWriter.abort

    @classmethod
    def finalize(cls, out: Path, shards: list[str], opts) -> dict:
        # the entry LLaMA-Factory's data/README.md documents for multimodal sharegpt (its mllm_demo)
        entry = {"file_name": "data", "formatting": "sharegpt", "columns": {"messages": "messages", "images": "images"},
                 "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}
        write_json(out / "dataset_info.json", {opts.name: entry})
        return {"dataset_dir": str(out), "dataset": opts.name}


class WdsWriter(Writer):
    """webdataset: `shards/SHARD.tar`, one sample per row: KEY-N.EXT (original bytes) and
    KEY-N.json (id, source, `messages` and LLaVA `conversations`)."""

    name = "wds"

    def __init__(self, out: Path, shard: str, opts):
        super().__init__(out, shard, opts)
        self.tar = ShardTarWriter(out / "shards" / f"{shard}.tar")
        self.count: dict[str, int] = {}

    def add(self, row: Row, name: str, ext: str, image: bytes, first: bool) -> None:
        n = self.count[name] = self.count.get(name, -1) + 1
        meta = {"id": row.id, "key": row.key, "task": row.task, "messages": chat_messages(row.turns),
                "conversations": llava_conversations(row.turns)}
        self.tar.write({"__key__": f"{name}-{n}", ext: image, "json": dumps(meta)})

    def commit(self) -> None:
        self.tar.commit()

    def abort(self) -> None:
        self.tar.abort()

    @classmethod
    def finalize(cls, out: Path, shards: list[str], opts) -> dict:
        return {"shard_folder": str(out / "shards")}


def parse_size(text: str) -> int:
    """`500MB`, `1GB`, `64MiB`, `1000` -> bytes, as datasets reads --max-shard-size
    (datasets/utils/py_utils.py convert_file_size_to_int: KB=10^3, KiB=2^10)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?B?)\s*", str(text).upper())
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 500MB, 1GB, 64MiB)")
    base = 1024 if m.group(3) == "IB" else 1000
    return int(float(m.group(1)) * base ** "_KMGT".index(m.group(2) or "_"))


def hf_features() -> dict:
    """The dataset's features as datasets records them (Features.to_dict), lists in the
    `[feature]` notation that datasets 3 and later all read: `image` an Image(), decoded to PIL
    on access, `messages` the chat format."""
    text = {"dtype": "string", "_type": "Value"}
    return {"id": text, "image": {"_type": "Image"},
            "messages": [{"role": text, "content": [{"type": text, "text": text}]}],
            "shard": text, "key": text, "task": text}


def hf_schema():
    """The Parquet schema, with the features under the `huggingface` metadata key
    (datasets/arrow_writer.py and features.py: {"info": {"features": ...}}), so that
    `load_dataset("parquet", data_files=...)` gives decoded images without any other argument."""
    import pyarrow as pa

    part = pa.struct([("type", pa.string()), ("text", pa.string())])
    message = pa.struct([("role", pa.string()), ("content", pa.list_(part))])
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # datasets' Image().pa_type
    fields = [("id", pa.string()), ("image", image), ("messages", pa.list_(message)), ("shard", pa.string()),
              ("key", pa.string()), ("task", pa.string())]
    meta = {"huggingface": dumps({"info": {"features": hf_features()}}).decode()}
    return pa.schema(fields, metadata=meta)


class HfWriter(Writer):
    """Hugging Face datasets: `data/SHARD-NNNNN.parquet`, row groups of at most
    PARQUET_ROW_GROUP rows, a new file once one holds --max-shard-size of data (images and text,
    before compression; a file may pass it by one row)."""

    name = "hf"
    needs = "pyarrow"

    def __init__(self, out: Path, shard: str, opts):
        super().__init__(out, shard, opts)
        self.schema, self.limit = hf_schema(), parse_size(opts.max_shard_size)
        self.folder = out / "data"
        self.folder.mkdir(parents=True, exist_ok=True)
        mine = re.compile(re.escape(shard) + r"-\d{5}\.parquet")
        for p in self.folder.iterdir():  # parts a killed run of this shard left
            if mine.fullmatch(p.name):
                p.unlink()
        self.batch: list[dict] = []
        self.part, self.size, self.pending, self.file, self.ctx = 0, 0, 0, None, None

    def add(self, row: Row, name: str, ext: str, image: bytes, first: bool) -> None:
        self.batch.append({"id": row.id, "image": {"bytes": image, "path": f"{self.shard}/{name}.{ext}"},
                           "messages": chat_messages(row.turns), "shard": self.shard, "key": row.key, "task": row.task})
        self.pending += len(image) + sum(len(u) + len(a) for u, a in row.turns) + len(row.id) + len(row.key)
        if len(self.batch) >= PARQUET_ROW_GROUP or self.size + self.pending >= self.limit:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.batch:
            return
        table = pa.Table.from_pylist(self.batch, schema=self.schema)
        self.size += self.pending
        self.batch, self.pending = [], 0
        if self.file is None:
            self.ctx = atomic_path(self.folder / f"{self.shard}-{self.part:05d}.parquet")
            self.file = pq.ParquetWriter(str(self.ctx.__enter__()), self.schema)
        self.file.write_table(table, row_group_size=PARQUET_ROW_GROUP)
        if self.size >= self.limit:
            self._close_part()

    def _close_part(self) -> None:
        self.file.close()
        self.ctx.__exit__(None, None, None)
        self.part, self.size, self.file, self.ctx = self.part + 1, 0, None, None

    def commit(self) -> None:
        self._flush()
        if self.file is not None:
            self._close_part()

    def abort(self) -> None:
        if self.file is not None:
            self.file.close()
            self.ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)

    @classmethod
    def finalize(cls, out: Path, shards: list[str], opts) -> dict:
        return {"data_files": str(out / "data" / "*.parquet")}


FORMATS: dict[str, type[Writer]] = {w.name: w for w in (LlavaWriter, HfWriter, ShareGPTWriter, WdsWriter)}
