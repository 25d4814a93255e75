"""The VLM: a language model (bundled, or any transformers causal LM) plus a connector.

    model, tok = new_model(config, tokenizer)        # or load_checkpoint(dir)
    enc = tok.encode_chat([(question, answer)], n_visual=T_v)
    batch = collate([enc, ...], tok.pad_id)
    out = model(**batch, visual=feats, visual_mask=mask)   # out.loss: assistant tokens only
    ids = model.generate(prompt_ids, visual=feats, stop_ids=tok.stop_ids)

Slot connectors (mlp, native) put one vector per visual slot into the sequence: the slots are the
positions holding `config.image_token_id`, filled in order with the sample's valid visual vectors,
and the `config.image_newline_id` positions get the learned row-newline vector. The xattn
connector takes no slots: the visual features reach the LM through gated cross-attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlmtool.errors import UsageError
from vlmtool.vlm.config import VLMConfig
from vlmtool.vlm.connectors import build_connector, connector_class, grid_of
from vlmtool.vlm.tokenizer import IGNORE, ChatTokenizer, grid_newlines

CONNECTOR_FIELDS = ("connector", "d_vision", "xattn_every", "patch_size", "image_size")
STAGES = {0: "language-model pretraining", 1: "alignment (connector only)", 2: "instruction tuning (connector + LM)"}


@dataclass
class VLMOutput:
    logits: torch.Tensor | None  # [B, T, V] (None: forward(logits=False))
    loss: torch.Tensor | None  # mean cross-entropy over the label tokens (0 when there are none; None without labels)
    n_label_tokens: torch.Tensor | int  # how many tokens the loss averages over (0-dim tensor; for weighting across ranks)


class VLM(nn.Module):
    """An LM and a connector. `lm` may be given already built (a `BundledLM` or `HFCausalLM`);
    otherwise it is built from `config` (an hf LM is loaded with its pretrained weights)."""

    def __init__(self, config: VLMConfig, lm: nn.Module | None = None):
        super().__init__()
        if lm is None:
            lm = build_lm(config)
        if config.is_hf:  # record the sizes the transformers model really has
            config = config.replace(**lm.sizes())
        self.lm = lm
        self._set_connector(config)

    def _set_connector(self, config: VLMConfig) -> None:
        connector_class(config.connector).check_lm(self.lm, config)
        device = next(self.lm.parameters()).device
        self.connector = build_connector(config, self.lm.d_model, config.n_heads, self.lm.n_layers).to(device)
        self.config = config

    def replace_connector(self, **changes) -> VLM:
        """Swap in a fresh connector built from the config with `changes` (any of CONNECTOR_FIELDS),
        keeping the LM and its weights: e.g. after stage 0, once the feature width is known.
        Returns self."""
        bad = sorted(set(changes) - set(CONNECTOR_FIELDS))
        if bad:
            raise UsageError(f"replace_connector changes only {', '.join(CONNECTOR_FIELDS)}, not {', '.join(bad)}")
        self._set_connector(self.config.replace(**changes))
        return self

    # ------------------------------------------------------------------ inputs

    def embed_inputs(self, input_ids: torch.Tensor, visual: torch.Tensor | None = None,
                     visual_mask: torch.Tensor | None = None, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, T] -> inputs_embeds [B, T, D_lm] with the visual slots filled.

        visual [B, T_v, D_v] and visual_mask [B, T_v] (True: a real feature) for mlp; pixels
        [B, C, H, W] uint8 for native. Row b's k-th slot gets row b's k-th valid vector."""
        slot = input_ids == self.config.image_token_id  # [B, T]
        nl = input_ids == self.config.image_newline_id  # [B, T]
        x = self.lm.embed(input_ids.masked_fill(slot | nl, 0))  # [B, T, D_lm]
        if not self.connector.slots:
            if slot.any() or nl.any():
                raise UsageError("the xattn connector takes no visual slots: encode the chat with n_visual=0")
            return x
        newline = self.connector.image_newline.to(x.dtype)
        if bool(nl.any()):
            x = torch.where(nl[..., None], newline, x)
        elif self.training and torch.distributed.is_available() and torch.distributed.is_initialized():
            x = x + 0.0 * newline.sum()  # DDP: every parameter in the graph (a zero gradient without newline slots)
        on_pixels = self.connector.reads == "pixels"
        src = pixels if on_pixels else visual
        if src is None and not slot.any():
            return x
        if src is None:
            raise UsageError(f"the input has visual slots but no {'pixels' if on_pixels else 'visual'} were given")
        vis = self.connector(src)  # [B, T_v, D_lm]
        if visual_mask is not None and on_pixels and visual_mask.dim() == 1:
            visual_mask = visual_mask.bool()[:, None].expand(vis.shape[:2])  # [B] rows with an image -> [B, T_v]
        elif visual_mask is None or on_pixels:
            visual_mask = torch.ones(vis.shape[:2], dtype=torch.bool, device=vis.device)
        visual_mask = visual_mask.bool()
        want, have = slot.sum(1), visual_mask.sum(1)  # [B]
        if not torch.equal(want, have):
            b = int((want != have).nonzero()[0])
            raise UsageError(f"sample {b} has {int(want[b])} visual slots but {int(have[b])} visual vectors")
        return x.masked_scatter(slot[..., None], vis[visual_mask].to(x.dtype))  # slots filled in order

    def _hook(self, visual, visual_mask):
        return None if visual is None else self.connector.hook(visual, visual_mask)

    # ------------------------------------------------------------------ training

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, visual: torch.Tensor | None = None,
                visual_mask: torch.Tensor | None = None, pixels: torch.Tensor | None = None,
                targets: torch.Tensor | None = None, segment_ids: torch.Tensor | None = None, logits: bool = True) -> VLMOutput:
        """input_ids [B, T]; labels [B, T] aligned with input_ids (-100 = not trained on; shifted
        here) or targets [B, T] already shifted (`shift_labels`: targets[:, t] is the token
        predicted at t; what `collate_items` makes); attention_mask [B, T] (1 real, 0 pad; not
        needed with right padding); segment_ids [B, T] for packed rows (1, 2, ... per sample,
        0 padding): positions restart at each sample and no token attends across samples;
        visual [B, T_v, D_v] + visual_mask [B, T_v] (mlp, xattn) or pixels [B, C, H, W] (native)
        -> VLMOutput(logits [B, T, V], loss, n_label_tokens).

        logits=False (training, with labels or targets): the bundled LM's head runs on the label
        positions only and VLMOutput.logits is None. The loss is the same; the head's matmul
        shrinks to the label tokens (no prompt, image or padding positions), which at vocab 4096
        is a large part of a small LM's step. An hf LM computes every position's logits."""
        x = self.embed_inputs(input_ids, visual, visual_mask, pixels)  # [B, T, D_lm]
        if segment_ids is not None:
            from vlmtool.vlm.lm import segment_mask

            mask, pos = segment_mask(segment_ids), segment_positions(segment_ids)  # [B, 1, T, T], [B, T]
        else:
            mask, pos = attention_mask, positions(attention_mask) if attention_mask is not None else None
        if targets is None and labels is not None:
            targets = shift_labels(labels)
        hook = self._hook(visual, visual_mask)
        if targets is not None and not logits and hasattr(self.lm, "hidden"):
            h, _ = self.lm.hidden(x, attention_mask=mask, position_ids=pos, block_hook=hook)  # [B, T, D]
            keep = targets != IGNORE  # [B, T]
            out, scores, wanted = None, self.lm.head(h[keep]), targets[keep]  # the head on [N, D] only
        else:
            out, _ = self.lm(x, attention_mask=mask, position_ids=pos, block_hook=hook)  # [B, T, V]
            if targets is None:
                return VLMOutput(out, None, 0)
            # a view of the logits, not a copy: the targets are shifted instead (nanoVLM's layout)
            scores, wanted = out.view(-1, out.shape[-1]), targets.reshape(-1)
        n = (targets != IGNORE).sum()  # a tensor: no device sync here
        total = F.cross_entropy(scores, wanted, ignore_index=IGNORE, reduction="sum")
        return VLMOutput(out, total / n.clamp(min=1), n)

    def freeze(self, stage: int) -> None:
        """Set requires_grad for a curriculum stage: 0 LM only (connector unused), 1 connector
        only (LM frozen), 2 connector and LM."""
        if stage not in STAGES:
            raise UsageError(f"stage must be 0, 1 or 2, got {stage!r}")
        for p in self.lm.parameters():
            p.requires_grad_(stage in (0, 2))
        for p in self.connector.parameters():
            p.requires_grad_(stage in (1, 2))

    def param_groups(self, weight_decay: float = 0.0, lr: float | None = None, lm_lr: float | None = None) -> list[dict]:
        """Optimizer groups of the trainable parameters: connector and LM (each with its own lr
        when given; `lm_lr` defaults to `lr`), matrices with `weight_decay`, vectors (norms,
        biases, gates, image_newline) without. Each group has a "name"."""
        groups = []
        for part, module, rate in (("connector", self.connector, lr), ("lm", self.lm, lm_lr if lm_lr is not None else lr)):
            seen = set()
            params = [p for p in module.parameters() if p.requires_grad and not (id(p) in seen or seen.add(id(p)))]
            for suffix, ps, wd in (("", [p for p in params if p.dim() >= 2], weight_decay),
                                   (".no_decay", [p for p in params if p.dim() < 2], 0.0)):
                if ps:
                    groups.append({"name": part + suffix, "params": ps, "weight_decay": wd, **({"lr": rate} if rate is not None else {})})
        return groups

    # ------------------------------------------------------------------ layout helpers

    def slot_count(self, n_features: int) -> int:
        """How many visual slots the chat template should make for n visual features."""
        return n_features if self.connector.slots else 0

    def native_layout(self, height: int, width: int) -> tuple[int, list[int]]:
        """native: (n_visual, newline_after) for an image of this size, to pass to encode_chat."""
        rows, cols = grid_of(height, width, self.config.patch_size)
        return rows * cols, grid_newlines(rows, cols)

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 visual: torch.Tensor | None = None, visual_mask: torch.Tensor | None = None,
                 pixels: torch.Tensor | None = None, max_new_tokens: int = 64, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None, stop_ids=(), use_cache: bool = True) -> list[list[int]]:
        """Continue each prompt: input_ids [B, T] (left-padded, with attention_mask, for B > 1
        prompts of different lengths) -> the new token ids per row, stop token excluded.

        Greedy when temperature == 0; otherwise sampled from softmax(logits / temperature) within
        the top_p nucleus, with a generator seeded by `seed`. use_cache=False recomputes the whole
        sequence at every step (the check that the KV cache changes nothing)."""
        B, T = input_ids.shape
        dev = input_ids.device
        mask = attention_mask.long() if attention_mask is not None else torch.ones(B, T, dtype=torch.long, device=dev)
        x = self.embed_inputs(input_ids, visual, visual_mask, pixels)  # [B, T, D_lm]
        hook = self._hook(visual, visual_mask)
        pos = positions(mask)  # [B, T]
        gen = torch.Generator(device=dev).manual_seed(seed) if seed is not None else None
        if T > self.lm.max_seq:
            raise UsageError(f"a prompt of {T} tokens exceeds the LM's max_seq {self.lm.max_seq}")
        max_new_tokens = min(max_new_tokens, self.lm.max_seq - T + 1)  # the last new token is never fed back
        stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=dev)
        out, done, cache, step_x, step_pos = [[] for _ in range(B)], torch.zeros(B, dtype=torch.bool, device=dev), None, x, pos
        for _ in range(max(max_new_tokens, 0)):
            if use_cache:  # the head on the last position only: the prompt's other logits are never read
                logits, cache = self.lm(step_x, attention_mask=mask, position_ids=step_pos, cache=cache, use_cache=True,
                                        block_hook=hook, logits_to_keep=1)
            else:
                logits, _ = self.lm(x, attention_mask=mask, position_ids=pos, block_hook=hook, logits_to_keep=1)
            last = logits[:, -1].clone()  # [B, V]; placeholders are never generated
            last[:, [i for i in (self.config.image_token_id, self.config.image_newline_id) if i < last.shape[-1]]] = float("-inf")
            nxt = pick_token(last, temperature, top_p, gen)  # [B]
            stopped = torch.isin(nxt, stop)
            for b, (tok, keep) in enumerate(zip(nxt.tolist(), (~done & ~stopped).tolist())):
                if keep:
                    out[b].append(tok)
            done |= stopped
            if bool(done.all()):
                break
            step_x = self.lm.embed(nxt[:, None])  # [B, 1, D_lm]
            step_pos = pos[:, -1:] + 1  # [B, 1]
            x, pos = torch.cat([x, step_x], 1), torch.cat([pos, step_pos], 1)
            mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=dev)], 1)
        return out


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """attention_mask [B, T] (1 real, 0 pad) -> position ids [B, T]: 0, 1, ... over the real tokens
    (left padding shifts a row's positions, padding positions get 0)."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """labels [B, T] aligned with the inputs -> targets [B, T]: targets[:, t] = labels[:, t + 1],
    the last position -100 (it predicts nothing)."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE)


def segment_positions(segment_ids: torch.Tensor) -> torch.Tensor:
    """segment_ids [B, T] (1, 2, ... per packed sample, 0 padding) -> position ids [B, T] that
    restart at 0 at the start of every sample."""
    T = segment_ids.shape[1]
    idx = torch.arange(T, device=segment_ids.device).expand_as(segment_ids)  # [B, T]
    start = torch.ones_like(segment_ids, dtype=torch.bool)
    start[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]  # [B, T]: a sample begins here
    return idx - torch.cummax(torch.where(start, idx, 0), dim=1).values


def pick_token(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator | None) -> torch.Tensor:
    """logits [B, V] -> token ids [B]: argmax at temperature 0, else nucleus sampling by inverse CDF
    with one uniform draw per row from `gen` (so two runs with equal logits pick equal tokens)."""
    if temperature <= 0:
        return logits.argmax(-1)
    if not 0 < top_p <= 1:
        raise UsageError(f"top_p must be in (0, 1], got {top_p}")
    probs = torch.softmax(logits.float() / temperature, -1)  # [B, V]
    p, idx = probs.sort(dim=-1, descending=True, stable=True)  # [B, V]
    p = p * ((p.cumsum(-1) - p) < top_p)  # keep the smallest prefix whose mass reaches top_p
    cdf = p.cumsum(-1)  # [B, V]
    u = torch.rand(logits.shape[0], 1, generator=gen, device=logits.device) * cdf[:, -1:]  # [B, 1]
    k = torch.searchsorted(cdf, u, right=True).clamp(max=logits.shape[-1] - 1)  # [B, 1]
    return idx.gather(-1, k).squeeze(-1)


def build_lm(config: VLMConfig) -> nn.Module:
    """The LM a config names: the bundled one (random init) or an hf model with its weights."""
    if config.is_hf:
        from vlmtool.vlm.hf import load_hf_lm

        return load_hf_lm(config.hf_source)
    from vlmtool.vlm.lm import BundledLM

    return BundledLM(config)


def new_model(config: VLMConfig, tokenizer: ChatTokenizer | None = None) -> tuple[VLM, ChatTokenizer]:
    """A fresh model and its tokenizer, with the config's vocabulary size and placeholder ids set
    from the tokenizer. Bundled LM: pass the tokenizer (`train_tokenizer(...)`). hf LM: the
    tokenizer is loaded from the same source when not given."""
    if tokenizer is None:
        if not config.is_hf:
            raise UsageError("the bundled LM needs a tokenizer: train one with vlmtool.vlm.train_tokenizer")
        from vlmtool.vlm.hf import HFTokenizer

        tokenizer = HFTokenizer.load(config.hf_source)
    config = config.replace(image_token_id=tokenizer.image_id, image_newline_id=tokenizer.newline_id)
    if not config.is_hf:
        config = config.replace(vocab_size=tokenizer.vocab_size)
    return VLM(config), tokenizer
