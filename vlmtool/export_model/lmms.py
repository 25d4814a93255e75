"""A vlmtool checkpoint as an lmms-eval model:

    lmms-eval --model vlmtool --model_args checkpoint=DIR,device=cpu --batch_size 8 --tasks pope

Registered through lmms-eval's entry-point group `lmms_eval.models` (plugin.py). It answers
generate requests with `vlm.infer.Answerer`, the same prompt, tower and decoding as
`vlmtool infer` and `vlmtool eval`: one image per request (the first visual), or none (blind);
`max_new_tokens`, `temperature`, `top_p` and `until` from the task's generation kwargs.
Log-likelihood requests (multiple-choice scoring) are not supported.
"""

from __future__ import annotations

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from vlmtool.errors import UsageError

DEFAULT_MAX_NEW_TOKENS = 64


class VlmtoolLMMS(lmms):
    is_simple = True

    def __init__(self, checkpoint: str, device: str = "auto", batch_size: int | str = 8, **kwargs) -> None:
        super().__init__()
        from vlmtool.vlm.infer import load_answerer

        self.batch_size_per_gpu = int(batch_size)
        self.answerer = load_answerer(checkpoint, device, self.batch_size_per_gpu)

    def _visual(self, req: Instance):
        """The request's one image (PIL, RGB) or None."""
        _, _, doc_to_visual, doc_id, task, split = req.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        images = [v for v in visuals if hasattr(v, "convert")]
        if len(images) != len(visuals):
            raise UsageError(f"lmms-eval task {task}: vlmtool answers about images only, not {type(visuals[0]).__name__}")
        return images[0].convert("RGB") if images else None

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Answers in request order, batched by equal generation kwargs and by seeing or blind."""
        out: list[str | None] = [None] * len(requests)
        groups: dict = {}
        for i, req in enumerate(requests):
            context, gen = req.args[0], dict(req.args[1] or {})
            image = self._visual(req)
            key = (repr(sorted((k, str(v)) for k, v in gen.items())), image is None)
            groups.setdefault(key, []).append((i, context, image, gen))
        for items in groups.values():
            for s in range(0, len(items), self.batch_size_per_gpu):
                chunk = items[s : s + self.batch_size_per_gpu]
                for (i, *_), text in zip(chunk, self._answer(chunk)):
                    out[i] = text
        return out

    def _answer(self, chunk: list) -> list[str]:
        gen = chunk[0][3]
        sample = bool(gen.get("do_sample")) and float(gen.get("temperature") or 0) > 0
        images = None if chunk[0][2] is None else [c[2] for c in chunk]
        texts = self.answerer.answer(images, [c[1] for c in chunk], int(gen.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS),
                                     float(gen.get("temperature") or 0) if sample else 0.0,
                                     float(gen.get("top_p") or 1.0) if sample else 1.0, 0 if sample else None)
        until = gen.get("until") or []
        until = [until] if isinstance(until, str) else until
        for u in until:
            texts = [t.split(u)[0] if u else t for t in texts]
        return texts

    def loglikelihood(self, requests):
        raise NotImplementedError("vlmtool's lmms-eval model answers generate requests only (no log-likelihood scoring)")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("vlmtool's lmms-eval model answers one round per request")
