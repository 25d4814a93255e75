"""Checkpoint folders: what a trained VLM is on disk.

    DIR/config.json          the VLMConfig
    DIR/model.safetensors    every weight of the VLM (LM and connector)
    DIR/tokenizer.json       the bundled tokenizer, or for an hf LM:
    DIR/lm/                  the transformers model's config.json and its tokenizer files
    DIR/checkpoint.json      format version, the vision-tower reference (copied from the feature
                             shards' features.json), the caller's `extra`; written last

Every file is written under a temporary name and renamed into place; `checkpoint.json` is removed
first and written last, so a save killed half-way leaves a folder that `load_checkpoint` refuses
with a clear message instead of a silent mix. Training state (optimizer, step, RNG) is the
trainer's, beside these files.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from vlmtool.errors import UsageError
from vlmtool.vlm.config import VLMConfig

FORMAT = "vlmtool-vlm"
VERSION = 1
FILES = ("config.json", "model.safetensors", "checkpoint.json")


@dataclass
class Checkpoint:
    model: object  # VLM, in eval mode, on the requested device
    tokenizer: object  # BundledTokenizer or HFTokenizer
    config: VLMConfig
    tower: dict | None = None
    extra: dict = field(default_factory=dict)
    path: Path | None = None


def save_checkpoint(folder: str | Path, model, tokenizer, tower: dict | None = None, extra: dict | None = None) -> Path:
    """Write `model` (a VLM) and its tokenizer into `folder` (created if needed); `tower` is the
    vision tower reference, `extra` any JSON-serialisable dict (e.g. stage, step). Returns the folder."""
    from vlmtool.core.shards import atomic_path, atomic_write, fsync_dir

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "version": VERSION, "tower": tower, "extra": extra or {},
            "tokenizer": "lm" if model.config.is_hf else "tokenizer.json"}
    json.dumps(meta)  # fail before touching anything
    (folder / "checkpoint.json").unlink(missing_ok=True)
    fsync_dir(folder)
    model.config.to_json(folder / "config.json")
    with atomic_path(folder / "model.safetensors") as tmp:
        _save_weights(model, tmp)
    if model.config.is_hf:
        _replace_folder(folder / "lm", lambda d: (model.lm.model.config.save_pretrained(str(d)), tokenizer.save(d)))
    else:
        tokenizer.save(folder / "tokenizer.json")
    meta["config_sha256"] = _config_sha256(folder, model.config.is_hf)
    atomic_write(folder / "checkpoint.json", (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return folder


def _config_sha256(folder: Path, with_lm: bool) -> str:
    """sha256 of config.json (and lm/config.json for a transformers LM): the architecture the
    weights were saved with. Head counts, rope_theta or norms edited afterwards would load into
    tensors of the same shapes and compute something else, silently."""
    import hashlib

    def canonical(p: Path) -> bytes:  # the values, not the layout: a re-indented file is the same config
        try:
            return json.dumps(json.loads(p.read_text()), sort_keys=True).encode()
        except (OSError, ValueError):
            return b""

    h = hashlib.sha256(canonical(folder / "config.json"))
    if with_lm:
        h.update(b"\0" + canonical(folder / "lm" / "config.json"))
    return h.hexdigest()


def _replace_folder(final: Path, fill) -> None:
    """Fill a temporary folder beside `final`, then swap it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        fill(tmp)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
            final.rename(old / final.name)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_checkpoint(folder: str | Path, device: str = "cpu") -> Checkpoint:
    """Read a checkpoint folder -> `Checkpoint(model, tokenizer, config, tower, extra, path)`.
    A missing folder or file, a half-written save, or weights that do not fit the config raise
    `UsageError` with one line."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"checkpoint {folder}: no such folder")
    what = _what_folder(folder)
    if what:
        raise UsageError(f"{folder} is {what}, not a checkpoint of `vlmtool train`: give the folder vlmtool train wrote (--out)")
    for name in FILES:
        if not (folder / name).is_file():
            hint = " (an interrupted save? use an earlier checkpoint)" if name == "checkpoint.json" else ""
            raise UsageError(f"checkpoint {folder}: {name} is missing{hint}")
    meta = _read_meta(folder)
    config = VLMConfig.from_json(folder / "config.json")
    model, tokenizer = build_from_config(folder, config)
    _load_weights(folder, model)
    want = meta.get("config_sha256")
    if want and want != _config_sha256(folder, config.is_hf):  # same shapes, other architecture (heads, rope_theta, eps)
        raise UsageError(f"checkpoint {folder}: config.json{' or lm/config.json' if config.is_hf else ''} changed after the "
                         "weights were saved (its sha256 differs from checkpoint.json's): the weights would load into another "
                         "architecture; restore it or retrain")
    model.to(device).eval()
    return Checkpoint(model, tokenizer, model.config, meta.get("tower"), meta.get("extra") or {}, folder)


def _what_folder(folder: Path) -> str | None:
    """What a folder given as a checkpoint is when it is another vlmtool output (None: looks like one)."""
    if (folder / "checkpoint.json").is_file() or (folder / "config.json").is_file() and (folder / "model.safetensors").is_file() \
            and not (folder / "open_clip_config.json").is_file():
        return None
    if (folder / "features.json").is_file():
        return "a feature folder (vlmtool encode)"
    if (folder / "open_clip_config.json").is_file():
        return "a CLIP model folder (vlmtool clip-train: give it to encode or filter as --pretrained)"
    if (folder / "instructions.jsonl").is_file():
        return "a synth output folder"
    if (folder / "shards").is_dir() and (folder / "scores.jsonl").is_file():
        return "a filter output folder"
    return None


def _read_meta(folder: Path) -> dict:
    try:
        meta = json.loads((folder / "checkpoint.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError(f"checkpoint {folder}: checkpoint.json is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UsageError(f"checkpoint {folder}: not a vlmtool VLM checkpoint (checkpoint.json has no format {FORMAT!r})")
    if meta.get("version", 0) > VERSION:
        raise UsageError(f"checkpoint {folder}: format version {meta['version']} is newer than this vlmtool reads ({VERSION})")
    return meta


def build_from_config(folder: Path, config: VLMConfig):
    from vlmtool.vlm.model import VLM

    if config.is_hf:
        from vlmtool.vlm.hf import HFTokenizer, load_hf_lm

        if not (folder / "lm" / "config.json").is_file():
            raise UsageError(f"checkpoint {folder}: lm/config.json is missing")
        tokenizer = HFTokenizer.load(folder / "lm")
        model = VLM(config, lm=load_hf_lm(folder / "lm", weights=False))
    else:
        from vlmtool.vlm.tokenizer import BundledTokenizer

        tokenizer = BundledTokenizer.load(folder / "tokenizer.json")
        model = VLM(config)
    if (tokenizer.image_id, tokenizer.newline_id) != (config.image_token_id, config.image_newline_id):
        raise UsageError(f"checkpoint {folder}: the tokenizer's image token ids do not match config.json")
    return model, tokenizer


def _unique_state(model) -> tuple[dict, set[str]]:
    """The state dict without second names of shared tensors (tied embeddings): (tensors, aliases).
    The first name registered is kept (the input embedding before the output head)."""
    seen, unique, aliases = set(), {}, set()
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            aliases.add(name)
        else:
            seen.add(key)
            unique[name] = t
    return unique, aliases


def _save_weights(model, path: Path) -> None:
    from safetensors.torch import save_file

    unique, _ = _unique_state(model)
    save_file({k: v.detach().contiguous() for k, v in unique.items()}, str(path), metadata={"format": "pt"})


def _load_weights(folder: Path, model) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(folder / "model.safetensors"))
    except (SafetensorError, OSError) as e:  # a corrupt or truncated file
        raise UsageError(f"checkpoint {folder}: model.safetensors cannot be read ({str(e).splitlines()[0][:160]})") from None
    want, aliases = _unique_state(model)
    problems = [f"{k} is {list(v.shape)} in the weights but {list(want[k].shape)} in the config"
                for k, v in tensors.items() if k in want and v.shape != want[k].shape]
    problems += [f"missing {k}" for k in want if k not in tensors]
    problems += [f"unexpected {k}" for k in tensors if k not in want and k not in aliases]
    if problems:
        more = f" and {len(problems) - 2} more" if len(problems) > 2 else ""
        raise UsageError(f"checkpoint {folder}: model.safetensors does not match config.json ({'; '.join(problems[:2])}{more})")
    model.load_state_dict(tensors, strict=False)
