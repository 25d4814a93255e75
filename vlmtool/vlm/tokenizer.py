"""Tokenizers and the chat template.

`train_tokenizer(texts)` trains a byte-level BPE with the `tokenizers` library and returns a
`BundledTokenizer` (saved and loaded as `tokenizer.json`). `vlm.hf.HFTokenizer` wraps a
transformers tokenizer behind the same interface. Both encode a conversation the same way:

    enc = tok.encode_chat([(user, assistant), ...], n_visual=N, newline_after=[...])

The conversation is rendered to text by the tokenizer's template, tokenized once with character
offsets, and the labels keep exactly the tokens inside assistant replies (with their end-of-turn
marker); everything else is -100. The `<image>` placeholder in a user turn (or, when absent, at
the start of the first user turn) expands to exactly N visual slots, each followed by a newline
slot when its index is in `newline_after` (LLaVA-NeXT's learned `image_newline` after each row
of an AnyRes grid; `grid_newlines` computes the indices). With N = 0 the placeholder is dropped:
a text-only sample, or the xattn connector, where the image enters by cross-attention.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vlmtool.errors import UsageError

IMAGE = "<image>"
IMAGE_NEWLINE = "<image_newline>"
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
USER, ASSISTANT, END = "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, USER, ASSISTANT, END, IMAGE, IMAGE_NEWLINE]
IGNORE = -100  # label of a position that is not trained on (PyTorch cross_entropy's ignore_index)
MAX_VISUAL = 1 << 16  # cap on the slots one sample may ask for


@dataclass
class ChatEncoding:
    """One encoded sample. `labels` is aligned with `input_ids` (the model shifts it):
    the token id where it is trained on, -100 elsewhere."""

    input_ids: list[int]
    labels: list[int]
    visual_positions: list[int] = field(default_factory=list)  # indices of the N visual slots, in order
    newline_positions: list[int] = field(default_factory=list)  # indices of the row-newline slots

    def __len__(self) -> int:
        return len(self.input_ids)


def grid_newlines(rows: int, cols: int, offset: int = 0) -> list[int]:
    """Visual-slot indices after which a newline goes for a rows x cols grid that starts at slot
    `offset` (LLaVA-NeXT: base-image tokens first, then the AnyRes grid with a newline per row)."""
    return [offset + (r + 1) * cols - 1 for r in range(rows)]


Turn = tuple[str, "str | None"]


class ChatTokenizer:
    """What the model and trainer need from a tokenizer. Subclasses define `render`, `_tokenize`,
    `decode` and set the ids below."""

    pad_id: int
    image_id: int
    newline_id: int
    stop_ids: list[int]  # generation stops at any of these (end-of-turn, eos)

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        raise NotImplementedError

    def _tokenize(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        raise NotImplementedError

    def encode_chat(self, turns: Sequence[Turn], n_visual: int = 0, newline_after: Iterable[int] = (),
                    system: str | None = None) -> ChatEncoding:
        """turns: [(user, assistant), ...]; the last assistant may be None for a generation prompt
        (the encoding then ends where the assistant's reply starts). Returns a `ChatEncoding`."""
        if not turns:
            raise UsageError("chat: a conversation needs at least one turn")
        if not 0 <= n_visual <= MAX_VISUAL:
            raise UsageError(f"chat: n_visual must be in 0..{MAX_VISUAL}, got {n_visual}")
        messages = [{"role": "system", "content": system}] if system else []
        spans, prompt = [], False
        for i, (user, reply) in enumerate(turns):
            messages.append({"role": "user", "content": _place_image(user, i, n_visual)})
            if reply is None:
                if i != len(turns) - 1:
                    raise UsageError("chat: only the last turn may have no assistant reply")
                prompt = True
                break
            head = self.render(messages, add_generation_prompt=True)
            messages.append({"role": "assistant", "content": reply})
            full = self.render(messages, add_generation_prompt=False)
            _check_prefix(head, full)
            spans.append((len(head), len(full.rstrip())))
        text = self.render(messages, add_generation_prompt=prompt)
        if spans:
            _check_prefix(full, text)
        ids, offsets = self._tokenize(text)
        labels = _labels(ids, offsets, spans)
        return self._expand_image(ids, labels, n_visual, sorted(set(newline_after)))

    def _expand_image(self, ids, labels, n_visual, newline_after) -> ChatEncoding:
        where = [i for i, t in enumerate(ids) if t == self.image_id]
        if len(where) != (1 if n_visual else 0):
            raise UsageError(f"chat: expected {1 if n_visual else 0} {IMAGE} placeholder, found {len(where)}")
        if newline_after and not (n_visual and 0 <= newline_after[0] and newline_after[-1] < n_visual):
            raise UsageError(f"chat: newline_after indices must lie in 0..{n_visual - 1}")
        if not n_visual:
            return ChatEncoding(ids, labels)
        p = where[0]
        nl = set(newline_after)
        slots, vis_pos, nl_pos = [], [], []
        for j in range(n_visual):
            vis_pos.append(p + len(slots))
            slots.append(self.image_id)
            if j in nl:
                nl_pos.append(p + len(slots))
                slots.append(self.newline_id)
        return ChatEncoding(ids[:p] + slots + ids[p + 1:], labels[:p] + [IGNORE] * len(slots) + labels[p + 1:],
                            vis_pos, nl_pos)


def _labels(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """Each token's id where its first character lies inside an assistant span (start <= offset <
    end), else IGNORE. The spans come in text order and do not overlap: a binary search a token
    (a scan of every span for every token cost a third of a stage-2 item's preparation)."""
    from bisect import bisect_right

    starts = [s for s, _ in spans]
    out = []
    for t, (o, _) in zip(ids, offsets):
        j = bisect_right(starts, o) - 1
        out.append(t if j >= 0 and o < spans[j][1] else IGNORE)
    return out


def _check_prefix(head: str, text: str) -> None:
    if not text.startswith(head):
        raise UsageError("chat: the chat template renders earlier turns differently once later turns are added; "
                         "the assistant tokens cannot be located (use a prefix-stable template)")


def _place_image(user: str, turn: int, n_visual: int) -> str:
    """The user text with exactly one `<image>` where the slots go (n_visual > 0) or none."""
    count = user.count(IMAGE)
    if count > 1:
        raise UsageError(f"chat: a user turn has {count} {IMAGE} placeholders; one image per sample")
    if not n_visual:
        return user.replace(IMAGE + "\n", "").replace(IMAGE, "")
    if turn == 0 and count == 0:
        return IMAGE + "\n" + user
    return user


class BundledTokenizer(ChatTokenizer):
    """Byte-level BPE (`tokenizers`) with the bundled LM's special tokens and chat template:
    `<|bos|><|user|>TEXT<|end|><|assistant|>REPLY<|end|>...`."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        ids = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise UsageError(f"tokenizer: missing special tokens {', '.join(missing)}; train it with train_tokenizer")
        self.ids = ids
        self.pad_id, self.bos_id, self.eos_id = ids[PAD], ids[BOS], ids[EOS]
        self.image_id, self.newline_id, self.end_id = ids[IMAGE], ids[IMAGE_NEWLINE], ids[END]
        self.stop_ids = [self.end_id, self.eos_id]

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        tags = {"system": "", "user": USER, "assistant": ASSISTANT}
        text = BOS + "".join(tags[m["role"]] + m["content"] + END for m in messages)
        return text + (ASSISTANT if add_generation_prompt else "")

    def _tokenize(self, text: str):
        enc = self.tok.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def encode(self, text: str) -> list[int]:
        """Plain text -> ids (special-token strings in the text are matched as special tokens)."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_text(self, text: str) -> ChatEncoding:
        """A stage-0 pretraining sample: `<|bos|> TEXT <|eos|>`, every token trained on."""
        ids = [self.bos_id, *self.encode(text), self.eos_id]
        return ChatEncoding(ids, list(ids))

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special)

    def save(self, path: str | Path) -> None:
        """Write `tokenizer.json` (atomically) at `path` (a file name)."""
        from vlmtool.core.shards import atomic_write

        atomic_write(path, self.tok.to_str().encode())

    @classmethod
    def load(cls, path: str | Path) -> BundledTokenizer:
        from tokenizers import Tokenizer

        p = Path(path)
        if not p.is_file():
            raise UsageError(f"tokenizer: {p} does not exist")
        try:
            return cls(Tokenizer.from_str(p.read_text()))
        except Exception as e:  # tokenizers raises a plain Exception on bad JSON
            if isinstance(e, UsageError):
                raise
            raise UsageError(f"tokenizer: {p} is not a tokenizers JSON file ({str(e).splitlines()[0][:120]})") from None


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2) -> BundledTokenizer:
    """Train a byte-level BPE tokenizer (GPT-2's scheme, via `tokenizers`) on an iterator of texts.

    The special tokens take ids 0..7 (pad, bos, eos, user, assistant, end-of-turn, image,
    image-newline); every byte is in the alphabet, so any text encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise UsageError(f"tokenizer: vocab_size must be at least {256 + len(SPECIAL_TOKENS)}, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return BundledTokenizer(tok)


MAX_TURNS = 256  # cap on the turns read from one instruction row


def turns_from_record(record: dict) -> list[Turn]:
    """An instruction row as synth writes it -> [(user, assistant), ...]. Reads LLaVA's
    `conversations` ([{"from": "human"|"gpt", "value": ...}]) and chat `messages` (role/content,
    content a string or a list of {"type": "image"} / {"type": "text", "text": ...} parts; an
    image part becomes the `<image>` placeholder). A malformed row raises `UsageError`."""
    if isinstance(record.get("conversations"), list):
        pairs = [(m.get("from"), m.get("value")) for m in record["conversations"] if isinstance(m, dict)]
        roles = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
        msgs = [(roles.get(r), v) for r, v in pairs]
    elif isinstance(record.get("messages"), list):
        msgs = [(m.get("role"), _content_text(m.get("content"))) for m in record["messages"] if isinstance(m, dict)
                and m.get("role") != "system"]
    else:
        raise UsageError("instruction row has neither 'conversations' nor 'messages'")
    if not msgs or len(msgs) % 2 or len(msgs) > 2 * MAX_TURNS:
        raise UsageError(f"instruction row has {len(msgs)} messages; expected user/assistant pairs (at most {MAX_TURNS})")
    turns = []
    for (ru, u), (ra, a) in zip(msgs[::2], msgs[1::2]):
        if ru != "user" or ra != "assistant" or not isinstance(u, str) or not isinstance(a, str):
            raise UsageError("instruction row: messages must alternate user and assistant text")
        turns.append((u, a))
    return turns


def _content_text(content) -> str | None:
    if isinstance(content, str) or content is None:
        return content
    if not isinstance(content, list):
        return None
    parts = [IMAGE if isinstance(c, dict) and c.get("type") == "image" else (c.get("text") if isinstance(c, dict) else None)
             for c in content]
    if any(not isinstance(x, str) for x in parts):
        return None
    return "".join(x + "\n" if x == IMAGE else x for x in parts)


def collate(encodings: Sequence[ChatEncoding], pad_id: int, side: str = "right", max_len: int | None = None):
    """Pad a batch: -> dict of LongTensors input_ids [B, T], labels [B, T] (-100 on padding) and
    attention_mask [B, T] (1 real, 0 pad). Right padding for training, left for generation.
    With `max_len`, longer samples raise (truncating would cut visual slots apart)."""
    import torch

    if side not in ("right", "left"):
        raise ValueError("side must be 'right' or 'left'")
    T = max(len(e) for e in encodings)
    if max_len is not None and T > max_len:
        raise UsageError(f"a sample has {T} tokens, more than the model's {max_len}")
    ids = torch.full((len(encodings), T), pad_id, dtype=torch.long)
    labels = torch.full((len(encodings), T), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(encodings), T), dtype=torch.long)
    for b, e in enumerate(encodings):
        s = slice(0, len(e)) if side == "right" else slice(T - len(e), T)
        ids[b, s] = torch.tensor(e.input_ids)
        labels[b, s] = torch.tensor(e.labels)
        mask[b, s] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
