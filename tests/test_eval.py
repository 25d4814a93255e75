"""Evals (issue 13): POPE metrics and probes, swap, blind, CHAIR, reports, bad input. Fake
answerers stand in for a model: one that knows each image's objects, always-yes, always-no."""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections import Counter

import pytest
from PIL import Image

from vlmtool.errors import JobFailed, UsageError
from vlmtool.evals import EvalOptions, build_probes, evaluate
from vlmtool.evals.chair import Vocabulary, chair_scores
from vlmtool.evals.data import read_images
from vlmtool.evals.metrics import confusion, parse_yes_no, pope_metrics, scores
from vlmtool.evals.pope import object_stats
from vlmtool.evals.swap import pairs_from_images

ASKED = re.compile(r"Is there an? (.+) in the image\?")


def _digest(img) -> str:
    return hashlib.sha1(img.convert("RGB").tobytes()).hexdigest()


class Truthful:
    """Answers from each image's true objects (found by its pixels' digest); blind, always yes.
    Records every call."""

    def __init__(self, images):
        self.objects = {}
        for im in images:
            try:
                self.objects[_digest(Image.open(io.BytesIO(im.data)))] = im.objects
            except OSError:  # a broken image: eval counts it and never asks about it
                pass
        self.calls: list[tuple[bool, list[str]]] = []

    def answer(self, images, questions, max_new_tokens=16):
        self.calls.append((images is not None, list(questions)))
        out = []
        for i, q in enumerate(questions):
            held = self.objects[_digest(images[i])] if images is not None else None
            m = ASKED.fullmatch(q)
            if m:
                out.append("Yes, there is." if held is None or m.group(1) in held else "No, there is not.")
            else:
                out.append("I see " + " and ".join(f"a {o}" for o in sorted(held or ())) + ".")
        return out


class Noisy(Truthful):
    """Truthful, except that it says yes about a third of the images whatever is asked."""

    def answer(self, images, questions, max_new_tokens=16):
        truth = super().answer(images, questions, max_new_tokens)
        return [a if images is None or int(_digest(images[i])[:6], 16) % 3 else "Yes" for i, a in enumerate(truth)]


class Always:
    def __init__(self, word):
        self.word = word

    def answer(self, images, questions, max_new_tokens=16):
        return [self.word] * len(questions)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from vlmtool.world import make_world

    out = tmp_path_factory.mktemp("evalworld")
    make_world(out, samples=48, shard_size=16, seed=4, sizes="small")
    return out


@pytest.fixture(scope="module")
def images(world):
    return read_images([str(world)], progress=False).images


FAST = EvalOptions(progress=False, chair_images=20)


# ---------------------------------------------------------------------------------- metrics

def test_metrics_match_hand_computed_confusion_matrices():
    labels = ["yes", "yes", "yes", "no", "no", "no", "no", "yes"]
    preds = ["yes", "no", "yes", "yes", "no", "no", "no", "yes"]
    c = confusion(labels, preds)
    assert c == {"tp": 3, "fn": 1, "fp": 1, "tn": 3}
    s = scores(c)
    assert s["accuracy"] == 6 / 8 and s["precision"] == 3 / 4 and s["recall"] == 3 / 4 and s["yes_ratio"] == 4 / 8
    assert s["f1"] == pytest.approx(0.75)


def test_always_yes_scores_two_thirds_and_always_no_zero_without_crashing():
    labels = ["yes", "no"] * 50
    yes = pope_metrics(labels, ["Yes."] * 100)
    assert yes["f1"] == pytest.approx(2 / 3, abs=1e-6) and yes["yes_ratio"] == 1.0 and yes["precision"] == 0.5 and yes["recall"] == 1.0
    no = pope_metrics(labels, ["No."] * 100)
    assert (no["f1"], no["precision"], no["recall"], no["yes_ratio"], no["accuracy"]) == (0.0, 0.0, 0.0, 0.0, 0.5)
    empty = pope_metrics([], [])
    assert empty["f1"] == 0.0 and empty["n"] == 0


def test_answers_are_parsed_like_popes_evaluation():
    assert parse_yes_no("Yes, there is a circle in the image.") == "yes"
    assert parse_yes_no("No.") == "no"
    assert parse_yes_no("There is not a star.") == "no"
    assert parse_yes_no("Yes. There is no square though.") == "yes"  # only the first sentence counts
    assert parse_yes_no("I think so") == "yes"  # POPE's default
    assert pope_metrics(["yes"], ["maybe"])["unclear"] == 1


# ---------------------------------------------------------------------------------- probes

def test_settings_differ_as_pope_defines_them(images):
    probes = build_probes(images, per_image=3, seed=0)
    pop, co = object_stats(images)
    vocab = set(pop)
    by_image = {s: {} for s in probes}
    for s, ps in probes.items():
        for p in ps:
            by_image[s].setdefault(p.image, []).append(p)
    objs = {im.name: im.objects for im in images}
    for s in probes:
        for name, ps in by_image[s].items():
            yes = [p.object for p in ps if p.label == "yes"]
            no = [p.object for p in ps if p.label == "no"]
            assert len(yes) == len(no) == min(3, len(objs[name]), len(vocab - objs[name]))  # balanced per image
            assert set(yes) <= objs[name] and not set(no) & objs[name]
            absent = sorted(vocab - objs[name])
            if s == "popular":  # the most frequent objects the image lacks
                assert sorted(pop[o] for o in no) == sorted(pop[o] for o in absent)[::-1][: len(no)][::-1]
            if s == "adversarial":  # those that co-occur most with the image's objects
                score = {o: sum(co.get(p, Counter())[o] for p in objs[name]) for o in absent}
                assert sorted(score[o] for o in no) == sorted(score.values())[::-1][: len(no)][::-1]
    assert probes["random"] != probes["popular"] != probes["adversarial"]
    mean_pop = {s: sum(pop[p.object] for p in ps if p.label == "no") / sum(p.label == "no" for p in ps) for s, ps in probes.items()}
    assert mean_pop["popular"] > mean_pop["random"]
    yes_sets = {s: [(p.image, p.text) for p in ps if p.label == "yes"] for s, ps in probes.items()}
    assert yes_sets["random"] == yes_sets["popular"] == yes_sets["adversarial"]


def test_swap_pairs_differ_in_the_asked_object(images):
    probes = [p for ps in build_probes(images).values() for p in ps]
    pairs = pairs_from_images(probes, images)
    objs = {im.name: im.objects for im in images}
    yes = {(p.image, p.text) for p in probes if p.label == "yes"}
    assert len(pairs) <= len(yes) and len(pairs) >= 0.7 * len(yes)
    for pair in pairs:
        obj = ASKED.fullmatch(pair.text).group(1)
        a, b = objs[pair.with_object], objs[pair.without_object]
        assert obj in a and obj not in b
        assert len(a) == len(b)  # as many objects: "more objects, more yes" cannot flip it
        # of the images of that count lacking the object, B is one closest to A's other objects
        best = min(len((a - {obj}) ^ objs[n]) for n in objs if obj not in objs[n] and len(objs[n]) == len(a))
        assert len((a - {obj}) ^ b) == best


# ---------------------------------------------------------------------------------- runs

def test_a_model_that_looks_beats_its_blind_self(world, images):
    model = Truthful(images)
    s = evaluate(model, [str(world)], FAST)
    for setting in ("random", "popular", "adversarial"):
        assert s["pope"][setting]["f1"] == 1.0 and s["pope"][setting]["yes_ratio"] == 0.5
        assert s["blind"][setting]["f1"] == pytest.approx(2 / 3, abs=1e-6) and s["blind"][setting]["yes_ratio"] == 1.0
        assert set(s["blind"][setting]) == set(s["pope"][setting])
    assert s["swap"]["flip_rate"] == 1.0 and s["swap"]["pairs"] > 20
    assert s["chair"]["chair_i"] == 0.0 and s["chair"]["descriptions"] == 20 and s["chair"]["mentions"] >= 20
    blind_calls = [qs for with_images, qs in model.calls if not with_images]
    assert blind_calls and all(ASKED.fullmatch(q) for qs in blind_calls for q in qs)
    asked_blind = [q for qs in blind_calls for q in qs]
    assert len(asked_blind) == len(set(asked_blind))  # a blind question is asked once, whatever the image


def test_a_model_that_always_says_yes_never_flips(world):
    s = evaluate(Always("Yes"), [str(world)], EvalOptions(progress=False, tasks=("pope", "swap")))
    assert all(m["f1"] == pytest.approx(2 / 3, abs=1e-6) and m["yes_ratio"] == 1.0 for m in s["pope"].values())
    assert s["swap"]["flip_rate"] == 0.0 and "blind" not in s and "chair" not in s


def _coco_style(tmp_path, probes, name="coco_pope_random.json"):
    """Probes as a file with exactly the published COCO files' schema, one object a line."""
    path = tmp_path / name
    path.write_text("".join(json.dumps({"question_id": p.question_id, "image": p.image, "text": p.text, "label": p.label}) + "\n"
                            for p in probes))
    return path


def _extract(images, root):
    for im in images:
        (root / im.name).parent.mkdir(parents=True, exist_ok=True)
        (root / im.name).write_bytes(im.data)


def test_an_official_format_file_gives_the_built_in_numbers(world, images, tmp_path):
    noisy = Noisy(images)
    built = evaluate(noisy, [str(world)], EvalOptions(progress=False, tasks=("pope",), settings=("random",)))
    probes = build_probes(images, settings=("random",))["random"]
    path = _coco_style(tmp_path, probes)
    by_key = evaluate(noisy, [str(world)], EvalOptions(progress=False, tasks=("pope",), questions=(str(path),)))
    root = tmp_path / "images"
    _extract(images, root)
    by_file = evaluate(noisy, None, EvalOptions(progress=False, tasks=("pope",), questions=(str(path),), image_root=str(root)))
    assert built["pope"]["random"]["f1"] < 1.0  # the noise shows, so equality below means something
    assert by_key["pope"]["coco_pope_random"] == built["pope"]["random"] == by_file["pope"]["coco_pope_random"]


def test_bad_lines_and_missing_images_are_counted_not_raised(world, images, tmp_path):
    probes = build_probes(images, settings=("random",))["random"][:20]
    path = _coco_style(tmp_path, probes, "q.jsonl")
    with open(path, "a") as f:
        f.write('{"question_id": 99, "image": "x.jpg", "text": "Is there a circle in the image?", "label": "maybe"}\n')
        f.write("not json at all\n")
        f.write(json.dumps({"question_id": 100, "image": "gone/none.jpg", "text": "Is there a star in the image?", "label": "no"}) + "\n")
    root = tmp_path / "images"
    _extract(images, root)
    s = evaluate(Truthful(images), None, EvalOptions(progress=False, questions=(str(path),), image_root=str(root), tasks=("pope",)))
    assert s["bad"]["question_lines"] == 2 and [b["line"] for b in s["bad"]["line_examples"]] == [21, 22]
    assert s["bad"]["images"] == {"missing_image": 1} and s["pope"]["q"]["unanswered"] == 1
    assert s["pope"]["q"]["n"] == 20 and s["pope"]["q"]["f1"] == 1.0
    only_missing = tmp_path / "missing.jsonl"
    only_missing.write_text(json.dumps({"question_id": 1, "image": "nope.jpg", "text": "Is there a star in the image?", "label": "no"}) + "\n")
    with pytest.raises(JobFailed, match="no probe could be answered.*nope.jpg.*missing_image"):
        evaluate(Always("yes"), None, EvalOptions(progress=False, questions=(str(only_missing),), image_root=str(root)))


def test_no_object_metadata_is_one_clear_error(world):
    with pytest.raises(UsageError, match="no sample has object metadata: give --objects-field"):
        evaluate(Always("yes"), [str(world)], EvalOptions(progress=False, objects_field="things"))


def test_chair_on_hand_made_descriptions():
    vocab = Vocabulary(["circle", "square", "star"], {"circle": ["ring", "disc"], "traffic light": ["stoplight"]})
    descriptions = ["A red circle next to two squares, and a star.",  # star is not there
                    "A ring above a blue square.",  # ring is the circle
                    "Three stoplights and a traffic light.",  # both name "traffic light", which is not there
                    "A plain background."]  # no object named
    truths = [{"circle", "square"}, {"circle", "square"}, {"circle"}, {"star"}]
    assert vocab.mentions(descriptions[0]) == ["circle", "square", "star"]
    s = chair_scores(descriptions, truths, vocab)
    assert (s["mentions"], s["hallucinated"]) == (7, 3)
    assert s["chair_i"] == pytest.approx(3 / 7, abs=1e-6) and s["chair_s"] == 0.5
    assert s["most_hallucinated"] == {"traffic light": 2, "star": 1}


def test_swap_pairs_from_a_questions_file(world, images, tmp_path):
    probes = [p for ps in build_probes(images).values() for p in ps]
    path = _coco_style(tmp_path, probes, "all.jsonl")
    looks = evaluate(Truthful(images), [str(world)], EvalOptions(progress=False, tasks=("swap",), questions=(str(path),)))
    prior = evaluate(Always("no"), [str(world)], EvalOptions(progress=False, tasks=("swap",), questions=(str(path),)))
    assert looks["swap"]["flip_rate"] == 1.0 and looks["swap"]["both_correct"] == 1.0 and looks["swap"]["pairs"] > 20
    assert prior["swap"]["flip_rate"] == 0.0 and prior["swap"]["pairs"] == looks["swap"]["pairs"]


def test_broken_samples_are_counted_and_the_rest_evaluated(tmp_path):
    from vlmtool.world import make_world

    truth = make_world(tmp_path / "w", samples=30, shard_size=10, seed=2, broken=0.3, sizes="small")
    data = read_images([str(tmp_path / "w")], progress=False)
    s = evaluate(Truthful(data.images), [str(tmp_path / "w")], EvalOptions(progress=False, tasks=("pope",)))
    broken = {k: v for k, v in truth["counts"]["broken"].items() if v}
    assert broken and {**s["bad"]["rejected_samples"], **s["bad"]["images"]} == broken  # read rejects + images that fail to decode
    assert s["images"] == 30 - sum(s["bad"]["rejected_samples"].values())
    assert all(m["f1"] == 1.0 for m in s["pope"].values())


def test_the_asker_batches_caches_and_counts_a_bad_image_once():
    from vlmtool.evals.answerer import Asker, ImageError

    class Echo:
        def __init__(self):
            self.batches = []

        def answer(self, images, questions, max_new_tokens=16):
            self.batches.append(len(questions))
            return [f"{'seen' if images else 'blind'}: {q}" for q in questions]

    def load(name):
        if name == "bad":
            raise ImageError("missing_image", name)
        return Image.new("RGB", (8, 8))

    model = Echo()
    asker = Asker(model, load, batch_size=3, progress=False)
    first = asker.ask([("a", "q1"), ("bad", "q1"), ("b", "q1"), ("a", "q2"), ("c", "q1"), (None, "q1")])
    again = asker.ask([("a", "q1"), ("bad", "q2"), (None, "q1")])
    assert first == ["seen: q1", None, "seen: q1", "seen: q2", "seen: q1", "blind: q1"]
    assert again == ["seen: q1", None, "blind: q1"]
    assert asker.bad == {"missing_image": 1} and max(model.batches) <= 3 and asker.asked == 5


def test_the_ablations_no_negatives_data_holds_no_no_answer_and_keeps_the_image_first(tmp_path):
    """bench/ablation.py's "no negatives" arm: every presence probe answered no is gone (the
    negative task's rows and the no-turn inside conversations); what is left is untouched."""
    import runpy

    import orjson

    from conftest import FIXTURES, ROOT

    from vlmtool.synth.job import run_synth
    from vlmtool.synth.options import SynthOptions

    run_synth([str(FIXTURES / "shapes")], str(tmp_path / "synth"), SynthOptions(teacher="captions", progress=False))
    src = tmp_path / "synth" / "instructions.jsonl"
    counts = runpy.run_path(str(ROOT / "bench" / "ablation.py"))["without_negatives"](src, tmp_path / "no-neg.jsonl")
    before = [orjson.loads(x) for x in src.read_bytes().splitlines()]
    after = [orjson.loads(x) for x in (tmp_path / "no-neg.jsonl").read_bytes().splitlines()]
    assert counts["dropped"] == sum(r["task"] == "negative" for r in before) > 0 and counts["no_turns_dropped"] > 0
    assert len(after) == counts["kept"] == len(before) - counts["dropped"]
    for r in after:
        conv = r["conversations"]
        assert not any(a["value"].startswith("No") for a in conv[1::2]), conv
        assert conv[0]["value"].startswith("<image>\n") and sum("<image>" in c["value"] for c in conv) == 1
    yes = [a["value"] for r in after for a in r["conversations"][1::2] if a["value"].startswith("Yes")]
    assert len(yes) == sum(a["value"].startswith("Yes") for r in before for a in r["conversations"][1::2] if r["task"] != "negative")
