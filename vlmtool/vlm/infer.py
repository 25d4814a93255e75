"""`vlmtool infer`, and the Python side of inference: an answerer for eval, a teacher for synth.

    ans = load_answerer("ckpt/", device="cpu")
    ans.answer([Image.open("a.jpg")], ["What colour is the cube?"])      # -> ["The cube is red."]
    ans.answer(None, ["What colour is the cube?"])                       # blind: no visual tokens

The image is encoded with the checkpoint's own tower (the reference encode recorded in
features.json: architecture, weights, layer, CLS): `encode_image(tower, image)` gives the same
rows encode writes for a single view. The native connector takes the pixels instead.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import MISSING, dataclass
from pathlib import Path

import orjson

from vlmtool.core.options import DEVICE, MAX_PIXELS, PRECISION, option
from vlmtool.core.samples import DEFAULT_MAX_PIXELS
from vlmtool.errors import UsageError

MAX_QUESTION_CHARS = 4096  # a question row's text, capped before it is tokenized
_TOWERS: dict = {}


def tower_field(tower: dict, *names, default=None):
    for n in names:
        if tower.get(n) is not None:
            return tower[n]
    return default


def load_tower(tower: dict, device="cpu", allow_change: bool = False):
    """The open_clip model a tower reference names (loaded once per process). Its weights file
    is checked against the sha256 encode recorded: a changed tower gives other features than the
    ones the model was trained on, so it is refused unless `allow_change`."""
    from vlmtool.clip.model import load_clip

    arch = tower_field(tower, "arch", "model", "architecture")
    pretrained = tower_field(tower, "pretrained", "weights", "path")
    if not arch and not pretrained:
        raise UsageError("the checkpoint's tower reference names no architecture or weights: cannot encode images")
    key = (arch, pretrained, str(device))
    if key not in _TOWERS:  # checked when loaded, not again for every image
        if not allow_change:
            check_tower_weights(tower)
        _TOWERS[key] = load_clip(arch, pretrained, device=device)
    return _TOWERS[key]


def check_tower_weights(tower: dict) -> None:
    """Refuse a tower whose weights file is not the one the features were made with."""
    from vlmtool.encode.job import file_sha256

    path, want = tower.get("weights_file"), tower.get("weights_sha256")
    if not path or not want:
        return
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"the checkpoint's vision tower {path} is missing: restore it, or pass --allow-tower-change "
                         "to encode with the tower at --pretrained's place as it is now")
    stat = p.stat()
    memo = (str(p), stat.st_size, stat.st_mtime_ns)
    if _SHA_MEMO.get(memo) is None:
        _SHA_MEMO[memo] = file_sha256(p)
    if _SHA_MEMO[memo] != want:
        raise UsageError(f"the vision tower {path} changed since the features were encoded (sha256 {_SHA_MEMO[memo][:12]}... , "
                         f"recorded {want[:12]}...): its features are not the ones the model learned; "
                         "pass --allow-tower-change to use it anyway")


_SHA_MEMO: dict = {}


def _view_tower(tower: dict):
    """The view geometry encode used (encode.views.Tower), from the checkpoint's tower reference;
    None for one whole-image view."""
    views = tower.get("views") or {}
    if not views.get("anyres"):
        return None
    from vlmtool.encode.views import Tower

    return Tower(int(tower["image_size"]), int(tower["patch_size"]), bool(tower.get("cls")), views["anyres"])


def encode_image(tower: dict, image, device="cpu", allow_change: bool = False):
    """A PIL image -> the rows [T_v, D] (float32) the LM sees: `visual_rows` without the newlines."""
    return visual_rows(tower, image, device, allow_change)[0]


def _view_pixels(loaded, views, device, decode: str):
    """The views as the tower's input [V, 3, S, S]: open_clip's transform on the CPU, or with
    decode="device" the same transform in torch ops on the device (core/device_decode.py)."""
    import numpy as np
    import torch

    if decode != "device":
        return torch.stack([loaded.transform(v) for v in views]).to(device)
    from vlmtool.core.device_decode import Decoded, model_input

    items = [Decoded(torch.from_numpy(np.array(v.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)) for v in views]  # [3, H, W]
    return model_input(items, loaded.preprocess, device)[0]


def visual_rows(tower: dict, image, device="cpu", allow_change: bool = False, decode: str = "cpu", dtype=None):
    """A PIL image -> (rows [T_v, D] float32 the LM sees, newline_after), as encode wrote them and
    train laid them out: layer `tower["layer"]` (LLaVA: -2), without CLS unless `tower["cls"]`;
    with the AnyRes layout the checkpoint recorded (base view + tiles, unpadded, a newline slot
    after each feature row), the very views encode cut and `features.lm_layout`'s order."""
    import torch

    from vlmtool import features
    from vlmtool.clip.model import grid_tokens

    loaded = load_tower(tower, device, allow_change)
    layer, cls = int(tower_field(tower, "layer", default=-2)), bool(tower_field(tower, "cls", default=False))
    image = image.convert("RGB")
    vt = _view_tower(tower)
    if vt is None:
        views, meta = [image], None
    else:
        from vlmtool.encode.views import image_views

        views, meta = image_views(image, vt)
    from vlmtool.core.runtime import autocast

    x = _view_pixels(loaded, views, torch.device(device) if isinstance(device, str) else device, decode)  # [V, 3, H, W]
    with torch.no_grad(), autocast(x.device, dtype):
        rows, _ = grid_tokens(loaded.model.visual, x, layer, cls)  # [V, T, D]
    rows = rows.reshape(-1, rows.shape[-1]).float()  # [V*T, D]: views one after the other, as encode writes them
    if meta is None:
        return rows, []
    order, newline_after = features.lm_layout(meta)
    return rows[order], list(newline_after)  # [T_v, D]


class PromptTooLong(UsageError):
    def __init__(self, index: int, tokens: int, limit: int):
        super().__init__(f"too_long: the prompt has {tokens} tokens, the model takes {limit}")
        self.index = index


class Answerer:
    """Answers questions about images with one checkpoint, `batch_size` prompts at a time."""

    def __init__(self, checkpoint, device="cpu", batch_size: int = 8, use_cache: bool = True, allow_tower_change: bool = False):
        self.ck, self.device, self.batch_size, self.use_cache = checkpoint, device, batch_size, use_cache
        self.model, self.tok, self.config = checkpoint.model, checkpoint.tokenizer, checkpoint.config
        self.allow_tower_change = allow_tower_change
        self.decode, self.dtype = "cpu", None  # --decode and --precision's autocast dtype (None: fp32)

    def answer(self, images: list | None, questions: list[str], max_new_tokens: int = 64, temperature: float = 0.0,
               top_p: float = 1.0, seed: int | None = None) -> list[str]:
        """One answer per question; `images` (PIL images, one per question) or None: blind."""
        if images is not None and len(images) != len(questions):
            raise UsageError(f"{len(images)} images for {len(questions)} questions")
        out: list = []
        for i in range(0, len(questions), self.batch_size):
            imgs = None if images is None else images[i : i + self.batch_size]
            out.extend(self._answer_batch(imgs, questions[i : i + self.batch_size], max_new_tokens, temperature, top_p, seed))
        return out

    def _answer_batch(self, images, questions, *gen) -> list:
        """Answers of one batch; a prompt longer than the model's context is answered with a
        `PromptTooLong` (the caller counts it) and the others still get theirs."""
        keep = list(range(len(questions)))
        answers: list = [None] * len(questions)
        while keep:
            try:
                ids = self.generate(None if images is None else [images[i] for i in keep], [questions[i] for i in keep], *gen)
            except PromptTooLong as e:
                answers[keep[e.index]] = e
                keep.pop(e.index)
                continue
            for i, x in zip(keep, ids):
                answers[i] = self.tok.decode(x, skip_special=True).strip()
            break
        return answers

    def inputs(self, images: list | None, questions: list[str]) -> dict:
        """Left-padded prompts and the visual inputs for one batch."""
        import torch

        from vlmtool.vlm.connectors import connector_class
        from vlmtool.vlm.tokenizer import collate

        cfg, kw = self.config, {}
        if images is not None and connector_class(cfg.connector).reads == "pixels":
            from vlmtool.vlm.data import pixels_of

            n, nl = self.model.native_layout(cfg.image_size, cfg.image_size)
            kw["pixels"] = torch.stack([torch.from_numpy(pixels_of(im, cfg.image_size)) for im in images]).to(self.device)  # [B, 3, S, S]
            layouts = [(n, nl)] * len(images)
        elif images is not None:
            if not self.ck.tower:
                raise UsageError(f"checkpoint {self.ck.path} has no vision tower reference: it cannot encode images")
            encoded = [visual_rows(self.ck.tower, im, self.device, self.allow_tower_change, self.decode, self.dtype) for im in images]
            feats = [f for f, _ in encoded]  # each [T_v, D]
            kw["visual"] = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True).to(self.device)  # [B, T, D]
            kw["visual_mask"] = torch.nn.utils.rnn.pad_sequence([torch.ones(len(f), dtype=torch.bool) for f in feats],
                                                                batch_first=True).to(self.device)  # [B, T]
            layouts = [(n, nl if n else []) for n, nl in ((self.model.slot_count(len(f)), nl) for f, nl in encoded)]
        else:
            layouts = [(0, [])] * len(questions)
        encs = [self.tok.encode_chat([(q, None)], n_visual=n, newline_after=nl) for q, (n, nl) in zip(questions, layouts)]
        limit = self.model.lm.max_seq
        for i, e in enumerate(encs):
            if len(e) > limit:
                raise PromptTooLong(i, len(e), limit)
        batch = collate(encs, self.tok.pad_id, side="left", max_len=self.model.lm.max_seq)
        return {"input_ids": batch["input_ids"].to(self.device), "attention_mask": batch["attention_mask"].to(self.device), **kw}

    def generate(self, images, questions, max_new_tokens=64, temperature=0.0, top_p=1.0, seed=None) -> list[list[int]]:
        from vlmtool.core.runtime import autocast

        inputs = self.inputs(images, questions)
        with autocast(self.device, self.dtype):
            return self.model.generate(**inputs, max_new_tokens=max_new_tokens, temperature=temperature,
                                       top_p=top_p, seed=seed, stop_ids=self.tok.stop_ids, use_cache=self.use_cache)


def load_answerer(checkpoint: str | Path, device="cpu", batch_size: int = 8, use_cache: bool = True,
                  allow_tower_change: bool = False) -> Answerer:
    """An `Answerer` over a checkpoint folder written by `vlmtool train`; its tower's weights are
    checked against the recorded sha256 before any image is answered."""
    from vlmtool.core.runtime import resolve_device
    from vlmtool.vlm.checkpoint import load_checkpoint

    dev = resolve_device(device) if isinstance(device, str) else device
    ck = load_checkpoint(checkpoint, dev)
    if ck.tower and not allow_tower_change:
        check_tower_weights(ck.tower)
    return Answerer(ck, dev, batch_size, use_cache, allow_tower_change)


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Image bytes -> an RGB PIL image, through the one decoder every job uses (bit depth, alpha,
    EXIF orientation handled), refused past `max_pixels` before any pixel is decoded."""
    from vlmtool.core.samples import SampleError, decode_image

    try:
        return decode_image(data, max_pixels=max_pixels)
    except SampleError as e:
        raise UsageError(f"cannot read the image ({e.reason}: {e.detail})") from None


# ---------------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class InferOptions:
    """`vlmtool infer`'s options (see its --help)."""

    checkpoint: str = option(MISSING, "A checkpoint folder written by vlmtool train.", flags=("--checkpoint", "-c"))
    image: str | None = option(None, "An image file to ask about.")
    question: str | None = option(None, "The question (with --image, or for every sample of --shards).", flags=("--question", "-q"))
    questions: str | None = option(None, "Batch mode: a JSONL file of {\"image\", \"question\"} rows.")
    shards: list[str] | None = option(None, "Batch mode: image shards; --question is asked of every sample.")
    max_new_tokens: int = option(64, "Longest answer, in tokens.", min=1)
    temperature: float = option(0.0, "0: greedy decoding; above 0: sampling.", min=0.0)
    top_p: float = option(1.0, "Sampling: nucleus mass.", min=0.0, max=1.0)
    seed: int = option(0, "Sampling: seed of the draws.")
    batch_size: int = option(8, "Questions answered together.", flags=("--batch-size", "-b"), min=1)
    no_cache: bool = option(False, "Recompute the whole sequence at every step instead of using the KV cache (for checking).")
    blind: bool = option(False, "Withhold the image (the visual tokens) from the model.")
    max_pixels: int = MAX_PIXELS()
    allow_tower_change: bool = option(False, "Encode with the checkpoint's tower even if its weights file changed since the "
                                      "features were made (sha256 differs).")
    device: str = DEVICE()
    precision: str = PRECISION()
    decode: str = option("cpu", "cpu: open_clip's transform on the CPU; device: the image (decoded with PIL) is resized, cropped "
                         "and normalized in torch on the model's device.")


def _jobs(opts: InferOptions) -> Iterator[dict]:
    """The questions to answer, as rows (with `image_obj`, or `error`)."""
    if sum(x is not None and x != [] for x in (opts.image, opts.questions, opts.shards)) != 1:
        raise UsageError("give one of --image FILE (with --question), --questions FILE.jsonl or --shards SHARDS (with --question)")
    if opts.image is not None:
        if not opts.question:
            raise UsageError("--image needs --question")
        yield {"image": opts.image, "question": opts.question, "image_obj": _read_image_file(opts.image, opts.max_pixels)}
    elif opts.questions is not None:
        yield from _question_rows(Path(opts.questions), opts.max_pixels)
    else:
        if not opts.question:
            raise UsageError("--shards needs --question (asked of every sample)")
        yield from _shard_rows(opts.shards, opts.question, opts.max_pixels)


def _read_image_file(path: str, max_pixels: int = DEFAULT_MAX_PIXELS):
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--image {path}: no such file")
    return open_image(p.read_bytes(), max_pixels)


def question_row(row) -> tuple[str, str | None]:
    """(question, image name or None) of one --questions row, or UsageError naming what is wrong:
    a JSON object, `question` a non-empty string of at most MAX_QUESTION_CHARS, `image` a string
    or absent (null: ask blind)."""
    if not isinstance(row, dict):
        raise UsageError(f"bad_row: a {type(row).__name__}, not a JSON object")
    q, img = row.get("question"), row.get("image")
    if not isinstance(q, str) or not q.strip():
        raise UsageError(f"bad_row: question is {type(q).__name__ if not isinstance(q, str) else 'empty'}, not a non-empty string")
    if len(q) > MAX_QUESTION_CHARS:
        raise UsageError(f"too_long: question of {len(q)} characters, at most {MAX_QUESTION_CHARS}")
    if img is not None and not isinstance(img, str):
        raise UsageError(f"bad_row: image is {type(img).__name__}, not a file name")
    return q, img


def _question_rows(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[dict]:
    if not path.is_file():
        raise UsageError(f"--questions {path}: no such file")
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                q, img = question_row(orjson.loads(line))
            except orjson.JSONDecodeError:
                yield {"line": n, "error": "bad_row: not JSON"}
                continue
            except UsageError as e:
                yield {"line": n, "error": str(e)}
                continue
            out = {"line": n, "image": img, "question": q}
            try:
                out["image_obj"] = None if img is None else open_image((path.parent / img).read_bytes(), max_pixels)
            except (UsageError, OSError) as e:
                out["error"] = f"image: {e.strerror if isinstance(e, OSError) and e.strerror else e}"
            yield out


def _shard_rows(shards: list[str], question: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[dict]:
    from vlmtool.core.records import ReadOptions, Reject, iter_samples
    from vlmtool.core.samples import SampleError
    from vlmtool.core.shards import expand_inputs, shard_refs

    for ref in shard_refs(expand_inputs(shards)):
        for s in iter_samples(ref, ReadOptions(max_pixels=max_pixels)):
            if isinstance(s, Reject):
                yield {"shard": ref.name, "key": s.key, "question": question, "error": s.reason}
                continue
            try:
                yield {"shard": ref.name, "key": s.key, "question": question, "image_obj": s.load_image()}
            except SampleError as e:
                yield {"shard": ref.name, "key": s.key, "question": question, "error": e.reason}


def run_infer(opts: InferOptions, as_json: bool) -> int:
    """Answer every question; print answers (or JSONL rows with --json) on stdout. Returns the count."""
    from vlmtool.core.device_decode import check_decode
    from vlmtool.core.runtime import precision_name, resolve_precision

    check_decode(opts.decode)
    ans = load_answerer(opts.checkpoint, opts.device, opts.batch_size, use_cache=not opts.no_cache,
                        allow_tower_change=opts.allow_tower_change)
    ans.decode, ans.dtype = opts.decode, resolve_precision(opts.precision, ans.device)
    prov = {"precision": precision_name(ans.dtype), "decode": opts.decode}  # with every --json row
    rows = _jobs(opts)
    n = 0
    while True:
        chunk = [r for _, r in zip(range(opts.batch_size), rows)]
        if not chunk:
            return n
        seed = opts.seed if opts.temperature > 0 else None
        for seeing in (True, False):  # rows with an image, then blind ones (no image given, or --blind)
            group = [r for r in chunk if "error" not in r and (r.get("image_obj") is not None and not opts.blind) == seeing]
            if group:
                images = [r["image_obj"] for r in group] if seeing else None
                for r, a in zip(group, ans.answer(images, [r["question"] for r in group], opts.max_new_tokens, opts.temperature,
                                                  opts.top_p, seed)):
                    if isinstance(a, Exception):
                        r["error"] = str(a)
                    else:
                        r["answer"] = a
        for r in chunk:
            r.pop("image_obj", None)
            line = orjson.dumps({**r, **prov}).decode() if as_json else r.get("answer", f"error: {r.get('error')}")
            sys.stdout.write(line + "\n")
            n += 1
        sys.stdout.flush()
