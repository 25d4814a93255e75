"""What eval needs from a model: an Answerer, and asking it many questions in batches.

An Answerer is anything with `answer(images, questions, max_new_tokens=...) -> list[str]`:
`images` is a list of PIL images (one per question) or None, meaning blind (the visual tokens
withheld: the language prior alone). `vlmtool.vlm.infer.load_answerer(checkpoint, device)` makes
one from a checkpoint folder; tests use fakes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from vlmtool.errors import UsageError


@runtime_checkable
class Answerer(Protocol):
    def answer(self, images: list | None, questions: list[str], max_new_tokens: int = 16) -> list[str]: ...


def load_answerer(checkpoint: str, device: str = "auto") -> Answerer:
    """A checkpoint folder -> an Answerer, through vlmtool.vlm.infer (imported only here)."""
    try:
        from vlmtool.vlm.infer import load_answerer as _load
    except ImportError as e:
        raise UsageError(f"--checkpoint needs the inference API (vlmtool.vlm.infer.load_answerer), which this install "
                         f"cannot import ({e}): install a vlmtool with `vlmtool infer`") from None
    return _load(checkpoint, device)


class ImageError(Exception):
    """An image that cannot be given to the model: `reason` is counted in the report."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


Key = tuple  # (image name or None for blind, question text, max_new_tokens)


class Asker:
    """Asks an Answerer (image, question) pairs in batches, once each: answers are cached by
    (image, question, max_new_tokens), so the settings, swap and blind share what they ask.
    An image that cannot be loaded is counted by reason and its pairs get no answer (None)."""

    def __init__(self, answerer: Answerer, load_image: Callable[[str], object], batch_size: int = 16,
                 progress: bool = True):
        if not hasattr(answerer, "answer"):
            raise UsageError(f"{type(answerer).__name__} is not an answerer: it has no answer(images, questions) method")
        self.answerer, self.load_image = answerer, load_image
        self.batch_size = max(1, batch_size)
        self.progress = progress
        self.cache: dict[Key, str | None] = {}
        self.bad: dict[str, int] = {}  # images that failed, by reason (each image once)
        self.failed: set[str] = set()
        self.bad_examples: list[dict] = []
        self.asked = 0

    def _image(self, name: str):
        if name in self.failed:
            return None
        try:
            return self.load_image(name)
        except ImageError as e:
            self.failed.add(name)
            self.bad[e.reason] = self.bad.get(e.reason, 0) + 1
            if len(self.bad_examples) < 10:
                self.bad_examples.append({"image": name, "reason": e.reason, "detail": e.detail})
            return None

    def ask(self, pairs: list[tuple[str | None, str]], max_new_tokens: int = 16, desc: str = "eval") -> list[str | None]:
        """Answers for (image name or None, question) pairs, in order; None where the image failed."""
        from tqdm import tqdm

        todo = list(dict.fromkeys((img, q, max_new_tokens) for img, q in pairs if (img, q, max_new_tokens) not in self.cache))
        bar = tqdm(total=len(todo), desc=desc, unit="q", file=sys.stderr, disable=not self.progress or not todo,
                   dynamic_ncols=True, mininterval=0.5)
        images: dict[str, object] = {}
        try:
            blind = [k for k in todo if k[0] is None]
            seen = sorted((k for k in todo if k[0] is not None), key=lambda k: k[0])  # an image's questions together
            for group, with_images in ((blind, False), (seen, True)):
                for i in range(0, len(group), self.batch_size):
                    self._batch(group[i:i + self.batch_size], with_images, max_new_tokens, images)
                    bar.update(len(group[i:i + self.batch_size]))
        finally:
            bar.close()
        return [self.cache[(img, q, max_new_tokens)] for img, q in pairs]

    def _batch(self, keys: list[Key], with_images: bool, max_new_tokens: int, images: dict) -> None:
        if with_images:
            for k in keys:
                if k[0] not in images:
                    images[k[0]] = self._image(k[0])
                    if len(images) > 4 * self.batch_size:  # keep only the last few decoded images
                        images.pop(next(iter(images)))
            ok = [k for k in keys if images.get(k[0]) is not None]
            for k in keys:
                if images.get(k[0]) is None:
                    self.cache[k] = None
            keys = ok
        if not keys:
            return
        imgs = [images[k[0]] for k in keys] if with_images else None
        answers = self.answerer.answer(imgs, [k[1] for k in keys], max_new_tokens=max_new_tokens)
        if len(answers) != len(keys):
            raise UsageError(f"the answerer returned {len(answers)} answers for {len(keys)} questions")
        self.asked += len(keys)
        for k, a in zip(keys, answers):
            self.cache[k] = a if isinstance(a, str) else str(a)
