"""The bundled tokenizer and the chat template: label masks, visual slots, text-only samples."""

import pytest

from vlmtool.errors import UsageError
from vlmtool.vlm import tokenizer as T
from vlmtool.vlm.config import VLMConfig
from vlmtool.vlm.tiny import tiny_tokenizer
from vlmtool.vlm.tokenizer import IGNORE, BundledTokenizer, collate, grid_newlines

CHAT = [("<image>\nWhat colour is the cube?", "The cube is red."), ("And the ball?", "Blue.")]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def trained_text(tok, enc) -> str:
    return tok.decode([t for t in enc.labels if t != IGNORE], skip_special=False)


def test_label_mask_covers_assistant_replies_and_their_end_of_turn_only(tok):
    enc = tok.encode_chat(CHAT, n_visual=3)
    assert trained_text(tok, enc) == "The cube is red.<|end|>Blue.<|end|>"
    assert all(lab in (IGNORE, t) for lab, t in zip(enc.labels, enc.input_ids))
    # the labelled tokens are two contiguous runs, each right after an assistant marker
    starts = [i for i in range(len(enc)) if enc.labels[i] != IGNORE and (i == 0 or enc.labels[i - 1] == IGNORE)]
    assert [tok.decode([enc.input_ids[i - 1]], skip_special=False) for i in starts] == ["<|assistant|>"] * 2


def test_image_placeholder_expands_to_exactly_n_slots_plus_row_newlines(tok):
    newlines = grid_newlines(rows=2, cols=3, offset=4)  # 4 base-image slots, then a 2x3 grid
    assert newlines == [6, 9]
    enc = tok.encode_chat(CHAT, n_visual=10, newline_after=newlines)
    ids = enc.input_ids
    assert ids.count(tok.image_id) == 10 and ids.count(tok.newline_id) == 2
    assert [ids[p] for p in enc.visual_positions] == [tok.image_id] * 10
    assert [ids[p] for p in enc.newline_positions] == [tok.newline_id] * 2
    # a newline slot follows visual slots 6 and 9, and the visual slots are in order
    assert enc.newline_positions == [enc.visual_positions[6] + 1, enc.visual_positions[9] + 1]
    assert enc.visual_positions == sorted(enc.visual_positions)
    assert all(enc.labels[p] == IGNORE for p in enc.visual_positions + enc.newline_positions)
    assert len(enc) == len(tok.encode_chat(CHAT, n_visual=1)) + 9 + 2


def test_placeholder_missing_puts_the_slots_in_the_first_user_turn(tok):
    enc = tok.encode_chat([("What colour is the cube?", "Red.")], n_visual=2)
    text = tok.decode(enc.input_ids, skip_special=False)
    assert text.startswith("<|bos|><|user|><image><image>\nWhat colour")


def test_text_only_sample_has_no_visual_slots(tok):
    enc = tok.encode_chat(CHAT, n_visual=0)
    assert tok.image_id not in enc.input_ids and tok.newline_id not in enc.input_ids
    assert enc.visual_positions == [] and enc.newline_positions == []
    assert tok.decode(enc.input_ids, skip_special=False).startswith("<|bos|><|user|>What colour")
    assert trained_text(tok, enc) == "The cube is red.<|end|>Blue.<|end|>"


def test_generation_prompt_ends_at_the_assistant_marker_and_trains_nothing(tok):
    enc = tok.encode_chat([("What colour is the cube?", None)], n_visual=2)
    assert tok.decode(enc.input_ids, skip_special=False).endswith("<|end|><|assistant|>")
    assert set(enc.labels) == {IGNORE}


def test_pretraining_text_trains_every_token(tok):
    enc = tok.encode_text("A red cube is above a blue ball.")
    assert enc.labels == enc.input_ids
    assert enc.input_ids[0] == tok.bos_id and enc.input_ids[-1] == tok.eos_id
    assert tok.decode(enc.input_ids) == "A red cube is above a blue ball."


def test_placeholder_ids_match_the_config_defaults(tok):
    cfg = VLMConfig()
    assert (tok.image_id, tok.newline_id) == (cfg.image_token_id, cfg.image_newline_id)


@pytest.mark.parametrize("turns, kwargs", [
    ([("<image> and <image>", "x")], {"n_visual": 2}),
    ([("hi", "x")], {"n_visual": 2, "newline_after": [2]}),
    ([("hi", None), ("again", "x")], {}),
    ([], {}),
])
def test_bad_conversations_raise_usage_errors(tok, turns, kwargs):
    with pytest.raises(UsageError):
        tok.encode_chat(turns, **kwargs)


def test_collate_pads_right_for_training_and_left_for_generation(tok):
    a, b = tok.encode_chat(CHAT, n_visual=2), tok.encode_chat([("Hi", "Yes.")])
    right = collate([a, b], tok.pad_id)
    left = collate([a, b], tok.pad_id, side="left")
    n = len(b)
    assert right["input_ids"].shape == (2, len(a))
    assert right["input_ids"][1, :n].tolist() == b.input_ids and right["attention_mask"][1].sum() == n
    assert left["input_ids"][1, -n:].tolist() == b.input_ids and left["attention_mask"][1, :-n].sum() == 0
    assert (right["labels"][1, n:] == IGNORE).all()
    with pytest.raises(UsageError):
        collate([a], tok.pad_id, max_len=len(a) - 1)


def test_tokenizer_json_round_trip_and_garbage(tok, tmp_path):
    tok.save(tmp_path / "tokenizer.json")
    again = BundledTokenizer.load(tmp_path / "tokenizer.json")
    assert again.encode_chat(CHAT, n_visual=3).input_ids == tok.encode_chat(CHAT, n_visual=3).input_ids
    (tmp_path / "bad.json").write_text("{not json")
    for path in (tmp_path / "bad.json", tmp_path / "missing.json"):
        with pytest.raises(UsageError) as e:
            BundledTokenizer.load(path)
        assert "\n" not in str(e.value)
    assert tok.decode(tok.encode("any bytes: é ✓")) == "any bytes: é ✓"  # byte-level: any text encodes


def test_synth_rows_in_both_formats_give_the_same_turns(tok):
    llava = {"conversations": [{"from": "human", "value": "<image>\nWhat colour is the cube?"},
                               {"from": "gpt", "value": "The cube is red."},
                               {"from": "human", "value": "And the ball?"}, {"from": "gpt", "value": "Blue."}]}
    messages = {"messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the cube?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "The cube is red."}]},
        {"role": "user", "content": [{"type": "text", "text": "And the ball?"}]},
        {"role": "assistant", "content": "Blue."}]}
    assert T.turns_from_record(llava) == T.turns_from_record(messages) == CHAT
    for bad in ({}, {"conversations": llava["conversations"][:3]}, {"conversations": llava["conversations"][1:3]},
                {"messages": [{"role": "user", "content": [{"type": "text"}]}, {"role": "assistant", "content": "x"}]}):
        with pytest.raises(UsageError):
            T.turns_from_record(bad)
