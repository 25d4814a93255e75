"""`vlmtool infer`, and the Python side of inference: an answerer for eval, a teacher for synth.

    ans = load_answerer("ckpt/", device="cpu")
    ans.answer([Image.open("a.jpg")], ["What colour is the cube?"])      # -> ["The cube is red."]
    ans.answer(None, ["What colour is the cube?"])                       # blind: no visual tokens

The image is encoded with the checkpoint's own tower (the reference encode recorded in
features.json: architecture, weights, layer, CLS): `encode_image(tower, image)` gives the same
rows encode writes for a single view. The native connector takes the pixels instead.
"""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from vlmtool.errors import UsageError

_TOWERS: dict = {}


def _tower_field(tower: dict, *names, default=None):
    for n in names:
        if tower.get(n) is not None:
            return tower[n]
    return default


def load_tower(tower: dict, device="cpu"):
    """The open_clip model a tower reference names (loaded once per process)."""
    from vlmtool.clip.model import load_clip

    arch = _tower_field(tower, "arch", "model", "architecture")
    pretrained = _tower_field(tower, "pretrained", "weights", "path")
    if not arch and not pretrained:
        raise UsageError("the checkpoint's tower reference names no architecture or weights: cannot encode images")
    key = (arch, pretrained, str(device))
    if key not in _TOWERS:
        _TOWERS[key] = load_clip(arch, pretrained, device=device)
    return _TOWERS[key]


def encode_image(tower: dict, image, device="cpu"):
    """A PIL image -> its feature rows [T, D] (float32), as encode writes them for one view:
    layer `tower["layer"]` (LLaVA: -2) of the tower, without CLS unless `tower["cls"]`."""
    import torch

    from vlmtool.clip.model import grid_tokens

    loaded = load_tower(tower, device)
    layer, cls = int(_tower_field(tower, "layer", default=-2)), bool(_tower_field(tower, "cls", default=False))
    x = loaded.transform(image.convert("RGB"))[None].to(device)  # [1, 3, H, W]
    with torch.no_grad():
        rows, _ = grid_tokens(loaded.model.visual, x, layer, cls)  # [1, T, D]
    return rows[0].float()  # [T, D]


class Answerer:
    """Answers questions about images with one checkpoint, `batch_size` prompts at a time."""

    def __init__(self, checkpoint, device="cpu", batch_size: int = 8, use_cache: bool = True):
        self.ck, self.device, self.batch_size, self.use_cache = checkpoint, device, batch_size, use_cache
        self.model, self.tok, self.config = checkpoint.model, checkpoint.tokenizer, checkpoint.config

    def answer(self, images: list | None, questions: list[str], max_new_tokens: int = 64, temperature: float = 0.0,
               top_p: float = 1.0, seed: int | None = None) -> list[str]:
        """One answer per question; `images` (PIL images, one per question) or None: blind."""
        if images is not None and len(images) != len(questions):
            raise UsageError(f"{len(images)} images for {len(questions)} questions")
        out = []
        for i in range(0, len(questions), self.batch_size):
            imgs = None if images is None else images[i : i + self.batch_size]
            ids = self.generate(imgs, questions[i : i + self.batch_size], max_new_tokens, temperature, top_p, seed)
            out.extend(self.tok.decode(x, skip_special=True).strip() for x in ids)
        return out

    def inputs(self, images: list | None, questions: list[str]) -> dict:
        """Left-padded prompts and the visual inputs for one batch."""
        import torch

        from vlmtool.vlm.tokenizer import collate

        cfg, kw = self.config, {}
        if images is not None and cfg.connector == "native":
            from vlmtool.vlm.data import pixels_of

            n, nl = self.model.native_layout(cfg.image_size, cfg.image_size)
            kw["pixels"] = torch.stack([torch.from_numpy(pixels_of(im, cfg.image_size)) for im in images]).to(self.device)  # [B, 3, S, S]
            layouts = [(n, nl)] * len(images)
        elif images is not None:
            if not self.ck.tower:
                raise UsageError(f"checkpoint {self.ck.path} has no vision tower reference: it cannot encode images")
            feats = [encode_image(self.ck.tower, im, self.device) for im in images]  # each [T, D]
            kw["visual"] = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True).to(self.device)  # [B, T, D]
            kw["visual_mask"] = torch.nn.utils.rnn.pad_sequence([torch.ones(len(f), dtype=torch.bool) for f in feats],
                                                                batch_first=True).to(self.device)  # [B, T]
            layouts = [(self.model.slot_count(len(f)), []) for f in feats]
        else:
            layouts = [(0, [])] * len(questions)
        encs = [self.tok.encode_chat([(q, None)], n_visual=n, newline_after=nl) for q, (n, nl) in zip(questions, layouts)]
        batch = collate(encs, self.tok.pad_id, side="left", max_len=self.model.lm.max_seq)
        return {"input_ids": batch["input_ids"].to(self.device), "attention_mask": batch["attention_mask"].to(self.device), **kw}

    def generate(self, images, questions, max_new_tokens=64, temperature=0.0, top_p=1.0, seed=None) -> list[list[int]]:
        return self.model.generate(**self.inputs(images, questions), max_new_tokens=max_new_tokens, temperature=temperature,
                                   top_p=top_p, seed=seed, stop_ids=self.tok.stop_ids, use_cache=self.use_cache)


def load_answerer(checkpoint: str | Path, device="cpu", batch_size: int = 8, use_cache: bool = True) -> Answerer:
    """An `Answerer` over a checkpoint folder written by `vlmtool train`."""
    from vlmtool.core.runtime import resolve_device
    from vlmtool.vlm.checkpoint import load_checkpoint

    dev = resolve_device(device) if isinstance(device, str) else device
    return Answerer(load_checkpoint(checkpoint, dev), dev, batch_size, use_cache)


class LocalTeacher:
    """A trained checkpoint as a synth teacher (`--teacher local:DIR`): one turn per request,
    the request's question (or the task's default) answered about its image. Requests in flight
    are answered together, up to `batch_size` a batch (one model, one batch at a time, in a
    thread); each result counts its prompt tokens (visual slots included) and answer tokens."""

    name = "local"

    def __init__(self, checkpoint: str | Path, device="cpu", max_new_tokens: int = 96, temperature: float = 0.0,
                 batch_size: int = 8):
        self.answerer = load_answerer(checkpoint, device, batch_size=batch_size)
        self.model = f"local:{Path(checkpoint).resolve()}"
        self.max_new_tokens, self.temperature, self.batch_size = max_new_tokens, temperature, batch_size
        self._pending: list = []  # (request, future) waiting for the next batch
        self._runner: asyncio.Task | None = None

    def question(self, req) -> str:
        from vlmtool.synth.teachers import DEFAULT_QUESTION

        return req.question or DEFAULT_QUESTION.get(req.task) or "Describe the image briefly."

    async def generate(self, req):
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((req, fut))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        while self._pending:
            await asyncio.sleep(0)  # the other workers' requests join this batch
            batch, self._pending = self._pending[: self.batch_size], self._pending[self.batch_size :]
            try:
                results = await asyncio.to_thread(self._answer, [r for r, _ in batch])
            except Exception as e:  # noqa: BLE001 -- each request of the batch fails, the job goes on
                results = [e] * len(batch)
            for (_, fut), res in zip(batch, results):
                if fut.done():
                    continue
                if isinstance(res, Exception):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)

    def _answer(self, reqs: list) -> list:
        """Results for a batch: those with an image together, blind ones together."""
        from vlmtool.synth.teachers import Result

        out, seeing, blind = [None] * len(reqs), [], []
        for i, req in enumerate(reqs):
            try:
                (seeing if req.image_bytes else blind).append((i, _open_image(req.image_bytes) if req.image_bytes else None))
            except UsageError as e:
                out[i] = Result(failed="local_error", errors=[f"local_error: {e}"])
        for group in (seeing, blind):
            if group:
                images = [im for _, im in group] if group is seeing else None
                for (i, _), res in zip(group, self._run([reqs[i] for i, _ in group], images)):
                    out[i] = res
        return out

    def _run(self, reqs: list, images) -> list:
        from vlmtool.synth.teachers import Result

        ans, qs = self.answerer, [self.question(r) for r in reqs]
        try:
            inputs = ans.inputs(images, qs)
            ids = ans.model.generate(**inputs, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                     stop_ids=ans.tok.stop_ids, use_cache=True)
        except UsageError as e:
            return [Result(failed="local_error", errors=[f"local_error: {e}"])] * len(reqs)
        prompt = inputs["attention_mask"].sum(1).tolist()
        return [Result(turns=[{"question": q, "answer": ans.tok.decode(x, skip_special=True).strip()}],
                       finish_reason="length" if len(x) >= self.max_new_tokens else "stop", prompt_tokens=int(p),
                       completion_tokens=len(x)) for q, x, p in zip(qs, ids, prompt)]

    async def aclose(self) -> None:
        return None


def _open_image(data: bytes):
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        return img.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise UsageError(f"cannot read the image ({type(e).__name__})") from None


# ---------------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class InferOptions:
    """`vlmtool infer`'s options (see its --help)."""

    checkpoint: str
    image: str | None = None
    question: str | None = None
    questions: str | None = None
    shards: list[str] | None = None
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8
    no_cache: bool = False
    blind: bool = False
    device: str = "auto"


def _jobs(opts: InferOptions) -> Iterator[dict]:
    """The questions to answer, as rows (with `image_obj`, or `error`)."""
    if sum(x is not None and x != [] for x in (opts.image, opts.questions, opts.shards)) != 1:
        raise UsageError("give one of --image FILE (with --question), --questions FILE.jsonl or --shards SHARDS (with --question)")
    if opts.image is not None:
        if not opts.question:
            raise UsageError("--image needs --question")
        yield {"image": opts.image, "question": opts.question, "image_obj": _read_image_file(opts.image)}
    elif opts.questions is not None:
        yield from _question_rows(Path(opts.questions))
    else:
        if not opts.question:
            raise UsageError("--shards needs --question (asked of every sample)")
        yield from _shard_rows(opts.shards, opts.question)


def _read_image_file(path: str):
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--image {path}: no such file")
    return _open_image(p.read_bytes())


def _question_rows(path: Path) -> Iterator[dict]:
    if not path.is_file():
        raise UsageError(f"--questions {path}: no such file")
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
            q, img = str(row["question"]), row.get("image")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            yield {"line": n, "error": "not a JSON object with a question"}
            continue
        out = {"image": img, "question": q}
        try:
            out["image_obj"] = None if img is None else _open_image((path.parent / img).read_bytes())
        except (UsageError, OSError) as e:
            out["error"] = f"image: {e.strerror if isinstance(e, OSError) and e.strerror else e}"
        yield out


def _shard_rows(shards: list[str], question: str) -> Iterator[dict]:
    from vlmtool.core.records import Reject, iter_samples
    from vlmtool.core.samples import SampleError
    from vlmtool.core.shards import expand_inputs, shard_refs

    for ref in shard_refs(expand_inputs(shards)):
        for s in iter_samples(ref):
            if isinstance(s, Reject):
                yield {"shard": ref.name, "key": s.key, "question": question, "error": s.reason}
                continue
            try:
                yield {"shard": ref.name, "key": s.key, "question": question, "image_obj": s.load_image()}
            except SampleError as e:
                yield {"shard": ref.name, "key": s.key, "question": question, "error": e.reason}


def run_infer(opts: InferOptions, as_json: bool) -> int:
    """Answer every question; print answers (or JSONL rows with --json) on stdout. Returns the count."""
    ans = load_answerer(opts.checkpoint, opts.device, opts.batch_size, use_cache=not opts.no_cache)
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
                    r["answer"] = a
        for r in chunk:
            r.pop("image_obj", None)
            line = orjson.dumps(r).decode() if as_json else r.get("answer", f"error: {r.get('error')}")
            sys.stdout.write(line + "\n")
            n += 1
        sys.stdout.flush()
