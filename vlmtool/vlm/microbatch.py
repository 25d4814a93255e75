"""A training step's forward and backward, in micro-batches once the device runs out of memory.

The step's items run as one batch until a device out-of-memory error; then the step is redone
in halves (quarters after another, ...) and the smaller size stays for the rest of the run
(core/oom.py's Backoff). Each micro-batch's loss, a mean over its own label tokens, is weighted
by its share of the step's label tokens (all ranks' together, as train.make_train_step's one
batch is), so the accumulated gradient is the full batch's: the effective batch and the
results are unchanged, up to float rounding (tests/test_oom.py: weights within 1e-6).

Under torchrun each rank backs off on its own; DDP reduces the gradients once, on the last
micro-batch's backward. An out-of-memory error inside that reduction is not recoverable.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

IGNORE = -100  # labels not trained on (vlm/model.py)


class Accumulator:
    def __init__(self, ddp, dev, dtype, collate: Callable[[list], dict], use_dist: bool, world: int):
        from vlmtool.core.oom import Backoff

        self.ddp, self.dev, self.dtype, self.collate = ddp, dev, dtype, collate
        self.use_dist, self.world = use_dist, world
        self.backoff = Backoff(1 << 30, "train", "micro-batch")

    def _reduce(self, t):
        if self.use_dist:
            import torch.distributed as td

            t = t.to(self.dev)
            td.all_reduce(t)
        return t

    def _backward(self, opt, parts: list[dict], ns: list, total) -> object:
        """Forward and backward of every part; -> the sum of (mean loss x label tokens) over parts."""
        import torch

        from vlmtool.core.runtime import autocast

        opt.zero_grad(set_to_none=True)
        summed = torch.zeros((), device=self.dev)
        for i, (part, n) in enumerate(zip(parts, ns)):
            batch = {k: v.to(self.dev, non_blocking=True) for k, v in part.items()}
            sync = self.ddp.no_sync() if self.use_dist and i < len(parts) - 1 else nullcontext()
            with sync:
                with autocast(self.dev, self.dtype):
                    out = self.ddp(**batch, logits=False)  # the head on the label tokens only
                scale = (n * self.world / total.clamp(min=1)).to(self.dev)  # this part's share of the global label tokens
                summed = summed + out.loss.detach().float() * n.to(self.dev)
                (out.loss * scale).backward()
        return summed

    def run(self, opt, items: list) -> tuple[float, float]:
        """Gradients of the step's items in opt's parameters -> (mean loss over the label
        tokens of all ranks, their count)."""
        import torch

        total = None
        while True:
            size = min(self.backoff.size, len(items))
            parts = [self.collate(items[i : i + size]) for i in range(0, len(items), size)]
            ns = [_label_tokens(p) for p in parts]  # [] each: the tokens the loss averages over
            if total is None:
                total = self._reduce(torch.stack(ns).sum()).cpu()
            ok, summed = self.backoff.attempt(size, lambda: self._backward(opt, parts, ns, total))
            if ok:
                break
        summed = self._reduce(summed)
        return float(summed / total.clamp(min=1)), float(total)


def _label_tokens(batch: dict):
    """The tokens a batch's loss averages over: its shifted targets that are not IGNORE (or, for
    labels aligned with the inputs, those past the first position: the model's own shift)."""
    if "targets" in batch:
        return (batch["targets"] != IGNORE).sum().float()
    return (batch["labels"][:, 1:] != IGNORE).sum().float()
