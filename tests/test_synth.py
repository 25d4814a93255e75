import os
import re
import signal
import subprocess
import tarfile
import sys
import time
from collections import Counter

import orjson
import pytest
from conftest import FIXTURES, json_out, run_cli, world_truth
from fake_openai import FakeOpenAI

from vlmtool.synth.job import SynthOptions, run_synth
from vlmtool.synth.teachers import RateLimiter, parse_turns
from vlmtool.synth.validate import Rejected, mentioned, validate
from vlmtool.world import make_world


def _lines(path):
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthw")
    make_world(out, samples=40, shard_size=10, seed=21, sizes="small", broken=0.1, kind="shapes")
    return out


def _photo_shards(out, captions, meta=None):
    """A folder of photo-like samples (noise and gradients, not shapes) with captions, and the
    given json metadata per sample (None: no json member at all), one shard."""
    import io

    import numpy as np
    from PIL import Image

    from vlmtool.core.shards import ShardTarWriter

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w = ShardTarWriter(out / "00000.tar")
    for i, cap in enumerate(captions):
        arr = (rng.random((48, 64, 3)) * 80 + np.linspace(0, 170, 64)[None, :, None]).astype("uint8")
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=80)
        rec = {"__key__": f"photo{i:04d}", "jpg": buf.getvalue(), "txt": cap.encode()}
        if meta is not None:
            rec["json"] = orjson.dumps(meta[i])
        w.write(rec)
    w.commit()
    return out


PHOTO_CAPTIONS = ["A dog asleep on a red couch.", "Two people walking on a beach at sunset.", "A bowl of fruit on a kitchen table.",
                  "A cat looking out of a window.", "A city street with a bus and a bicycle.", "A laptop next to a cup of coffee."]


def test_no_object_metadata_means_no_negative_questions_unless_a_vocabulary_is_given(tmp_path):
    photos = _photo_shards(tmp_path / "photos", PHOTO_CAPTIONS, meta=[{"url": f"http://x/{i}.jpg"} for i in range(6)])
    s = run_synth([str(photos)], str(tmp_path / "a"), SynthOptions(progress=False))
    rows = _lines(tmp_path / "a" / "instructions.jsonl")
    assert s["samples"] == 6 and s["requests"] == 18 and len(rows) == s["instructions"] > 0  # (the caption alone: answers repeat)
    assert "negative" not in s["by_task"] and not any(r["task"] == "negative" for r in rows)
    assert s["negatives_skipped"] == {"no_object_metadata": 6} and "no --vocabulary" in s["note"]
    manifest = orjson.loads((tmp_path / "a" / "manifest.json").read_bytes())
    assert manifest["totals"]["negatives_skipped"] == {"no_object_metadata": 6} and manifest["options"]["vocabulary"] is None
    # no json member at all: the same
    bare = _photo_shards(tmp_path / "bare", PHOTO_CAPTIONS)
    assert run_synth([str(bare)], str(tmp_path / "b"), SynthOptions(progress=False, tasks="negative"))["instructions"] == 0

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("# things to ask about\ndog\nzebra\ngiraffe\n\nkite\n")
    s = run_synth([str(photos)], str(tmp_path / "c"), SynthOptions(progress=False, tasks="negative", vocabulary=str(vocab)))
    negs = _lines(tmp_path / "c" / "instructions.jsonl")
    assert s["instructions"] == len(negs) == 6 and s["negatives_skipped"] == {}
    asked = {r["key"]: r["conversations"][0]["value"].split("Is there ")[1] for r in negs}
    assert all(q.split()[1] in {"zebra", "giraffe", "kite", "dog"} for q in asked.values())
    assert "dog" not in asked["photo0000"]  # the caption names a dog: never asked as absent


def test_vocabulary_popularity_and_cooccurrence_come_from_the_data(tmp_path):
    """Labels of another dataset (not the shapes world's): negatives are about those labels,
    popular ones by their counts in the data, adversarial ones by what co-occurs."""
    from vlmtool.core.records import ReadOptions
    from vlmtool.core.shards import expand_inputs, shard_refs
    from vlmtool.synth.objects import ObjectTables, absent_object, count_objects

    labels = [["dog", "frisbee"], ["dog", "frisbee"], ["dog", "frisbee", "tree"], ["cat", "sofa"], ["cat"], ["car", "tree"]]
    meta = [{"objects": [{"label": x} for x in ls]} for ls in labels]
    photos = _photo_shards(tmp_path / "p", PHOTO_CAPTIONS, meta)
    t = count_objects(shard_refs(expand_inputs([str(photos)])), ReadOptions(), "objects")
    assert t.popularity == {"dog": 3, "frisbee": 3, "tree": 2, "cat": 2, "sofa": 1, "car": 1}
    assert t.cooccurrence["dog"] == {"frisbee": 3, "tree": 1} and t.cooccurrence["tree"]["car"] == 1
    assert absent_object("k", ["dog"], t.vocabulary, "adversarial", t) == "frisbee"
    assert absent_object("k", ["dog", "frisbee"], t.vocabulary, "popular", t) == "tree"
    assert absent_object("k", ["cat"], ["sofa"], "random", ObjectTables()) == "sofa"
    # a tie in popularity goes to the larger name, with and without --balance's surplus (one order),
    # and the balanced draw passes over a leading no to the next in that order
    tie = ObjectTables({"car": 2, "cat": 2, "bus": 1, "dog": 1})
    assert absent_object("k", ["dog"], ["bus", "car", "cat"], "popular", tie) == "cat"
    assert absent_object("k", ["dog"], ["bus", "car", "cat"], "popular", tie, surplus={}) == "cat"
    assert absent_object("k", ["dog"], ["bus", "car", "cat"], "popular", tie, surplus={"cat": -1}) == "car"
    assert absent_object("k", ["dog"], ["bus", "car", "cat"], "popular", tie, surplus={"cat": -1, "car": -2}) == "bus"
    s = run_synth([str(photos)], str(tmp_path / "o"), SynthOptions(progress=False, tasks="negative", negatives="adversarial"))
    rows = _lines(tmp_path / "o" / "instructions.jsonl")
    asked = {r["key"]: r["conversations"][0]["value"] for r in rows}
    assert s["instructions"] == 6 and asked["photo0000"].endswith("Is there a tree in the image?")  # dog+frisbee: tree co-occurs
    assert asked["photo0004"].endswith("Is there a sofa in the image?")  # cat: sofa co-occurs
    assert not any(w in " ".join(asked.values()) for w in ("circle", "square", "hexagon"))
    # another field name
    meta2 = [{"things": ls} for ls in labels]
    s = run_synth([str(_photo_shards(tmp_path / "p2", PHOTO_CAPTIONS, meta2))], str(tmp_path / "o2"),
                  SynthOptions(progress=False, tasks="negative", objects_field="things"))
    assert s["instructions"] == 6


def test_synth_reads_no_world_and_has_no_long_function():
    import ast
    from pathlib import Path

    import vlmtool.synth

    for p in Path(vlmtool.synth.__path__[0]).glob("*.py"):
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.startswith("vlmtool.world") for n in names), p
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno < 80, (p.name, node.name)


def test_cli_parameters_are_the_options_fields():
    import dataclasses
    import inspect as pyinspect

    from vlmtool.cli.synth import synth_cmd

    params = set(pyinspect.signature(synth_cmd).parameters) - {"inputs", "out", "as_json"}
    assert params == {f.name for f in dataclasses.fields(SynthOptions)}


def _expected_requests(world, tasks=4):
    truth = {}
    import tarfile

    for t in sorted(world.glob("*.tar")):
        with tarfile.open(t) as tf:
            for m in tf:
                if m.name.endswith(".json"):
                    truth[m.name[:9]] = orjson.loads(tf.extractfile(m).read())
    good = [k for k, v in truth.items() if "broken" not in v]
    return good, len(good) * tasks


def test_captions_teacher_writes_llava_and_messages(tmp_path):
    s = json_out(run_cli("synth", FIXTURES / "shapes", "--out", tmp_path / "a", "--json", "--no-progress"))
    rows = _lines(tmp_path / "a" / "instructions.jsonl")
    assert s["complete"] and len(rows) == s["instructions"] == s["requests"] - sum(s["rejected"].values())
    assert set(s["by_task"]) == {"conversation", "detail", "reasoning", "negative"}
    for r in rows:
        conv = r["conversations"]
        assert conv[0]["from"] == "human" and conv[0]["value"].startswith("<image>\n")
        assert [c["from"] for c in conv] == ["human", "gpt"] * (len(conv) // 2)
        assert r["image"] == f"{r['shard'].rsplit('/', 1)[-1][:-4]}/{r['key']}.jpg"
    assert len({r["id"] for r in rows}) == len(rows)
    world = orjson.loads((FIXTURES / "shapes" / "world.json").read_bytes())
    assert s["samples_rejected"] == {k: v for k, v in world["counts"]["broken"].items() if v}
    negs = [r for r in rows if r["task"] == "negative"]
    assert negs and all(r["conversations"][1]["value"].startswith("No,") for r in negs)
    # presence probes come in balanced pairs (POPE's yes and no), each answer true to the truth
    truth = {k: {o["shape"] for o in v.get("objects") or []} for k, v in world_truth(FIXTURES / "shapes").items()}
    answers = Counter()
    for r in rows:
        conv = r["conversations"]
        for q, a in zip(conv[::2], conv[1::2]):
            asked = re.fullmatch(r"(?:<image>\n)?Is there an? (\w+) in the image\?", q["value"])
            if asked:
                said = a["value"].split(",")[0]
                assert said == ("Yes" if asked.group(1) in truth[r["key"]] else "No"), (r["key"], q, a)
                answers[r["task"], said] += 1
    for task in ("conversation", "negative"):
        assert answers[task, "Yes"] == answers[task, "No"] > 0, answers
    m = run_synth([str(FIXTURES / "shapes")], str(tmp_path / "b"), SynthOptions(format="messages", tasks="conversation=1,negative=1",
                                                                               per_sample=1, progress=False))
    mrows = _lines(tmp_path / "b" / "instructions.jsonl")
    assert len(mrows) == m["instructions"] <= 24 and set(m["by_task"]) <= {"conversation", "negative"}
    assert mrows[0]["messages"][0]["role"] == "user" and mrows[0]["messages"][0]["content"][0] == {"type": "image"}


def test_faults_on_first_try_still_give_exactly_one_result_each(small_world, tmp_path):
    good, n_req = _expected_requests(small_world)
    with FakeOpenAI(fail_once=0.2, timeout_sleep=4.0, api_key="sk-test-123") as srv:  # the client gives up at 2 s: a slow reply on busy cores is no timeout
        os.environ["VLMTOOL_TEST_KEY"] = "sk-test-123"
        try:
            s = run_synth([str(small_world)], str(tmp_path / "o"), teacher="openai", base_url=srv.url, model="fake", concurrency=8,
                          timeout=2.0, max_retries=4, backoff=0.01, api_key_env="VLMTOOL_TEST_KEY", progress=False)
        finally:
            del os.environ["VLMTOOL_TEST_KEY"]
        outcomes = Counter(o for _, _, o in srv.log)
        attempts = srv.attempts
    rows = _lines(tmp_path / "o" / "instructions.jsonl")
    assert s["complete"] and s["requests"] == n_req == len(rows) == len({r["id"] for r in rows})
    assert {(r["key"], r["task"]) for r in rows} == {(k, t) for k in good for t in ("conversation", "detail", "reasoning", "negative")}
    faulted = sum(v for k, v in outcomes.items() if k != "ok")
    assert set(outcomes) - {"ok"} == {"429", "500", "timeout", "drop", "malformed"}  # every fault kind was met
    assert 0.1 * n_req < faulted < 0.3 * n_req
    assert s["retries"] == faulted and max(attempts.values()) == 2
    assert s["prompt_tokens"] > 0 and s["completion_tokens"] > 0 and s["image_tokens"] > 0
    blob = b"".join(p.read_bytes() for p in (tmp_path / "o").rglob("*") if p.is_file())
    assert b"sk-test-123" not in blob  # the key was sent, never written


def test_requests_that_always_fail_are_recorded_not_lost(small_world, tmp_path):
    _, n_req = _expected_requests(small_world)
    with FakeOpenAI(fail_always=0.1, faults=("500",)) as srv:
        s = run_synth([str(small_world)], str(tmp_path / "o"), teacher="openai", base_url=srv.url, model="fake", concurrency=8,
                      max_retries=2, backoff=0.001, progress=False)
    failed = s["failed"].get("server_error", 0)
    assert failed > 0 and s["ok"] + failed == n_req
    log = [r for p in (tmp_path / "o" / "log").glob("*.jsonl") for r in _lines(p)]
    assert sum(r["status"] == "failed" for r in log) == failed and all(r["errors"] == ["server_error"] * 3 for r in log if r["status"] == "failed")
    with FakeOpenAI() as srv:  # the server recovered: --retry-failed sends only the failed ones
        s2 = run_synth([str(small_world)], str(tmp_path / "o"), teacher="openai", base_url=srv.url, model="fake", retry_failed=True,
                       progress=False)
        assert len(srv.log) == failed
    assert s2["ok"] == n_req and s2["failed"] == {}


@pytest.mark.slow  # two CLI processes and a kill: ~25 s on 2 busy cores
def test_sigkill_then_rerun_no_duplicates_no_gaps_no_resend(small_world, tmp_path):
    _, n_req = _expected_requests(small_world)
    out = tmp_path / "o"
    with FakeOpenAI(latency=0.05) as srv:
        cmd = [sys.executable, "-m", "vlmtool", "synth", str(small_world), "--out", str(out), "--teacher", "openai", "--base-url",
               srv.url, "--model", "fake", "--concurrency", "2", "--no-progress"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            logs = list((out / "log").glob("*.jsonl")) if (out / "log").exists() else []
            if logs and logs[0].read_bytes().count(b"\n") >= 30:
                break
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        written = {orjson.loads(x)["id"] for p in (out / "log").glob("*.jsonl") for x in p.read_bytes().splitlines() if x.endswith(b"}")}
        assert 30 <= len(written) < n_req
        before = len(srv.log)
        s = json_out(run_cli("synth", small_world, "--out", out, "--teacher", "openai", "--base-url", srv.url, "--model", "fake",
                             "--json", "--no-progress"))
        resent = {rid for rid, _, _ in srv.log[before:]}
    assert not (resent & written)  # nothing already written was asked for again
    rows = _lines(out / "instructions.jsonl")
    assert s["requests"] == n_req == len(rows) == len({r["id"] for r in rows})


def test_grounding_rejects_absent_objects_and_keeps_present_ones():
    present = ["circle", "square"]
    vocab = ["circle", "square", "star", "triangle"]
    ok = validate([{"question": "q", "answer": "A red circle sits left of a blue square."}], "detail", present, vocab)
    assert ok
    with pytest.raises(Rejected) as e:
        validate([{"question": "q", "answer": "A red circle and a yellow star are shown."}], "detail", present, vocab)
    assert e.value.reason == "hallucination" and "star" in e.value.detail
    assert mentioned("There is no star here. Two squares sit below.", vocab) == {"square"}
    neg = validate([{"question": "Is there a star?", "answer": "No, there is no star in the image."}], "negative", present, vocab, absent="star")
    assert neg
    with pytest.raises(Rejected) as e:
        validate([{"question": "Is there a star?", "answer": "Yes, a star is there."}], "negative", present, vocab, absent="star")
    assert e.value.reason == "not_negative"
    for bad, reason in [("", "empty"), ("I'm sorry, I cannot help with that image.", "refusal"),
                        ("the the the the the the the the the the the the the the", "degenerate"),
                        ("The image shows a red circle on the left and a blue square that is", "truncated")]:
        with pytest.raises(Rejected) as e:
            validate([{"question": "q", "answer": bad}], "detail", present, vocab)
        assert e.value.reason == reason


def test_hallucinating_teacher_is_caught_end_to_end(small_world, tmp_path):
    with FakeOpenAI(hallucinate=0.5) as srv:
        s = run_synth([str(small_world)], str(tmp_path / "o"), teacher="openai", base_url=srv.url, model="fake",
                      tasks="detail", progress=False)
    rows = _lines(tmp_path / "o" / "instructions.jsonl")
    assert s["hallucinations"] > 0 and s["ok"] == len(rows)
    assert all("hexagon" not in r["conversations"][1]["value"] or "hexagon" in r["conversations"][1]["value"].split(".")[0] for r in rows)


def test_servers_without_json_schema_and_loose_replies_still_work(small_world, tmp_path):
    with FakeOpenAI(reject_response_format=True) as srv:
        s = run_synth([str(small_world)], str(tmp_path / "o"), teacher="openai", base_url=srv.url, model="fake",
                      tasks="negative", progress=False)
    assert s["ok"] == s["requests"] > 0
    assert parse_turns('Sure! ```json\n{"turns": [{"question": "q", "answer": "a."}]}\n```', "conversation") == [{"question": "q", "answer": "a."}]
    assert parse_turns('Here you go: {"question": "q", "answer": "b."} hope it helps', "reasoning") == [{"question": "q", "answer": "b."}]
    assert parse_turns("A plain description.", "detail")[0]["answer"] == "A plain description."
    assert parse_turns("not json at all", "conversation") is None


def test_retry_after_is_honoured(small_world, tmp_path):
    with FakeOpenAI(fail_once=1.0, faults=("429",), retry_after="0.3") as srv:
        run_synth([str(small_world / "00000.tar")], str(tmp_path / "o"), teacher="openai", base_url=srv.url, model="fake",
                  tasks="negative", progress=False)
        times = {}
        for rid, t, _ in srv.log:
            times.setdefault(rid, []).append(t)
    gaps = [b - a for a, b in (v for v in times.values() if len(v) == 2)]
    assert gaps and min(gaps) >= 0.29


def test_rate_limiter_spaces_requests():
    import asyncio

    async def go():
        lim = RateLimiter(requests_per_s=20)
        t0 = time.monotonic()
        for _ in range(30):
            await lim.acquire()
        return time.monotonic() - t0

    assert asyncio.run(go()) >= (30 - 20) / 20 * 0.9


def test_bad_arguments(tmp_path):
    p = run_cli("synth", FIXTURES / "shapes", "--out", tmp_path / "a", "--teacher", "openai", check=False)
    assert p.returncode == 2 and "--base-url" in p.stderr
    p = run_cli("synth", FIXTURES / "shapes", "--out", tmp_path / "b", "--tasks", "poetry", check=False)
    assert p.returncode == 2 and "unknown task" in p.stderr


@pytest.mark.slow  # three CLI processes: ~35 s on 2 busy cores
def test_slurm_ranks_split_shards_and_the_last_one_writes_the_output(small_world, tmp_path):
    json_out(run_cli("synth", small_world, "--out", tmp_path / "one", "--json", "--no-progress"))
    outs = [json_out(run_cli("synth", small_world, "--out", tmp_path / "two", "--json", "--no-progress",
                             env={"SLURM_PROCID": str(r), "SLURM_NTASKS": "2"})) for r in (0, 1)]
    assert [o["complete"] for o in outs] == [False, True]
    assert (tmp_path / "two" / "instructions.jsonl").read_bytes() == (tmp_path / "one" / "instructions.jsonl").read_bytes()
    assert sorted(p.name for p in (tmp_path / "two" / "log").glob("*.jsonl")) == ["requests-00000.jsonl", "requests-00001.jsonl"]


def _stored(out) -> bytes:
    return b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())


@pytest.mark.parametrize("how", ["declared", "chunked", "gzipped"])
def test_a_50_mb_reply_is_dropped_at_the_cap_and_the_job_fails_naming_it(small_world, tmp_path, how):
    from vlmtool.errors import JobFailed

    out = tmp_path / "o"
    with FakeOpenAI(huge=1.0, huge_bytes=50 << 20, chunked=how == "chunked", gzipped=how == "gzipped") as srv, pytest.raises(JobFailed) as e:
        run_synth([str(small_world / "00000.tar")], str(out), SynthOptions(teacher="openai", base_url=srv.url, model="fake",
                                                                            tasks="negative", max_retries=3, progress=False))
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    n = manifest["totals"]["requests"]
    assert n > 0 and manifest["totals"]["failed"] == {"reply_too_large": n}
    assert str(e.value) == f"synth: {n} of {n} requests failed (reply_too_large: {n}); rerun with --retry-failed to send them again"
    assert len(srv.log) == n  # not retried: the same reply would come again
    assert sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) < 200_000  # nothing of the replies was kept
    assert srv.huge_sent < n * (50 << 20)  # the client hung up on each reply before its end


def test_a_teacher_that_reflects_headers_never_gets_the_key_or_url_credentials_stored(small_world, tmp_path, monkeypatch, capsys):
    import base64

    key, password = "sk-test-very-secret-123", "hunter2pass"
    monkeypatch.setenv("VLMTOOL_TEST_KEY", key)
    with FakeOpenAI(reflect_headers=True) as srv:
        url = srv.url.replace("http://", f"http://alice:{password}@")
        s = run_synth([str(small_world / "00000.tar")], str(tmp_path / "o"), SynthOptions(
            teacher="openai", base_url=url, model="fake", tasks="conversation,negative", api_key_env="VLMTOOL_TEST_KEY"))
        seen = set(srv.auth_seen)
    assert s["instructions"] > 0 and any(a.startswith("Basic ") for a in seen)  # the server did get both credentials
    out, err = capsys.readouterr()
    blob = _stored(tmp_path / "o") + out.encode() + err.encode() + orjson.dumps(s)
    for secret in (key, password, base64.b64encode(f"alice:{password}".encode()).decode()):
        assert secret.encode() not in blob
    rows = _lines(tmp_path / "o" / "instructions.jsonl")
    assert any("Request headers:" in r["conversations"][1]["value"] and "***" in r["conversations"][1]["value"] for r in rows)
    assert orjson.loads((tmp_path / "o" / "manifest.json").read_bytes())["options"]["base_url"].startswith("http://***@")


def test_unknown_preset_and_missing_vocabulary_are_one_line_and_write_nothing(tmp_path):
    from vlmtool.errors import UsageError

    p = run_cli("synth", FIXTURES / "shapes", "--out", tmp_path / "o", "--image-preset", "nosuch", check=False)
    assert p.returncode == 2 and p.stderr.startswith("vlmtool: error: --image-preset: unknown model preset 'nosuch'")
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "detail.txt").write_text("Describe {the_image} given {caption}.")
    for change, needle in [({"vocabulary": str(tmp_path / "missing.txt")}, "--vocabulary"), ({"vocabulary": str(tmp_path)}, "--vocabulary"),
                           ({"vocabulary": str(tmp_path / "latin1.txt")}, "not UTF-8"), ({"format": "csv"}, "--format"),
                           ({"negatives": "all"}, "--negatives"), ({"prompts": str(tmp_path / "nope")}, "--prompts"),
                           ({"prompts": str(tmp_path / "prompts")}, "the_image"),
                           ({"max_failed": float("nan")}, "--max-failed"), ({"objects_field": " "}, "--objects-field")]:
        with pytest.raises(UsageError) as e:
            run_synth([str(FIXTURES / "shapes")], str(tmp_path / "o"), SynthOptions(progress=False, **change))
        assert needle in str(e.value) and "\n" not in str(e.value), change
        assert not (tmp_path / "o").exists()


def test_odd_and_bad_metadata_never_stop_the_captions_teacher(tmp_path):
    metas = [{"objects": [{"shape": "circle", "bbox": None, "color": 5}], "width": "abc"},
             {"objects": [{"name": "dog", "category": "animal", "bbox": [0, 0, 10, 10], "color": "brown"}, {"label": "ball", "bbox": [30, 5, 40, 15]}]},
             {"objects": ["cat", "sofa"], "height": None},
             {"objects": []},
             {"objects": 5},
             {"objects": [{"shape": "circle", "bbox": "abcd"}]}]
    captions = ["A circle.", "A brown dog and a ball.", "A cat on a sofa.", "An empty room.", "Five.", "A circle."]
    photos = _photo_shards(tmp_path / "p", captions, metas)
    for _ in range(2):  # a rerun neither crashes nor sends again
        s = run_synth([str(photos)], str(tmp_path / "o"), SynthOptions(progress=False))
        assert s["complete"] and s["samples"] == 6 and s["samples_rejected"] == {"bad_metadata": 2} and s["failed"] == {}
    rows = _lines(tmp_path / "o" / "instructions.jsonl")
    assert {r["key"] for r in rows} == {f"photo{i:04d}" for i in range(4)}
    detail = next(r for r in rows if r["key"] == "photo0001" and r["task"] == "detail")["conversations"][1]["value"]
    assert detail.startswith("The image shows a brown dog and a ball") and "The brown dog is to the left of the ball." in detail


def test_a_teacher_that_raises_fails_that_request_only(small_world, tmp_path, monkeypatch):
    from vlmtool.synth.teachers import CaptionsTeacher

    real = CaptionsTeacher.turns

    def flaky(self, req):
        if req.sample_key.endswith("3") and req.task == "detail":
            raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")
        return real(self, req)

    monkeypatch.setattr(CaptionsTeacher, "turns", flaky)
    s = run_synth([str(small_world)], str(tmp_path / "o"), SynthOptions(progress=False))
    assert s["complete"] and 0 < s["failed"]["teacher_error"] < s["requests"] * 0.1
    log = [r for p in (tmp_path / "o" / "log").glob("*.jsonl") for r in _lines(p)]
    assert all("TypeError" in r["detail"] for r in log if r["status"] == "failed")


def test_a_job_whose_requests_fail_exits_1_naming_the_main_reason(small_world, tmp_path):
    p = run_cli("synth", small_world / "00000.tar", "--out", tmp_path / "o", "--teacher", "openai", "--base-url", "http://127.0.0.1:9/v1",
                "--model", "fake", "--max-retries", "1", "--backoff", "0.001", "--json", "--no-progress", check=False)
    totals = orjson.loads((tmp_path / "o" / "manifest.json").read_bytes())["totals"]  # outputs and manifest are written first
    n = totals["requests"]
    assert p.returncode == 1 and p.stdout == "" and n > 0 and totals["failed"] == {"connection": n}
    assert p.stderr.strip().splitlines()[-1] == (f"vlmtool: error: synth: {n} of {n} requests failed (connection: {n}); "
                                                 "rerun with --retry-failed to send them again")
    assert "Traceback" not in p.stderr
    # some failed: over --max-failed is a failure, under it is not
    from vlmtool.errors import JobFailed

    with FakeOpenAI(fail_always=0.2, faults=("500",)) as srv:  # which requests fail depends on the path: shares vary
        opts = SynthOptions(teacher="openai", base_url=srv.url, model="fake", max_retries=0, tasks="negative", progress=False)
        with pytest.raises(JobFailed, match=r"^synth: \d+ of \d+ requests failed \(server_error: \d+\)"):
            run_synth([str(small_world)], str(tmp_path / "a"), opts, max_failed=0.02)
        s = run_synth([str(small_world)], str(tmp_path / "b"), opts)
    assert 0 < sum(s["failed"].values()) / s["requests"] <= 0.5


def test_every_option_has_help():
    import typer.main

    from vlmtool.cli import app

    cmd = typer.main.get_command(app).commands["synth"]
    missing = [p.name for p in cmd.params if not getattr(p, "help", None)]
    assert missing == []


def test_hostile_corpus_every_broken_record_counted_nothing_lost_nothing_run(tmp_path_factory, tmp_path, monkeypatch):
    """make_faults' corpus through synth (captions teacher): the outcome faults.json gives for a
    reader that decodes images, record by record; every good sample asked about; no shell run."""
    from pathlib import Path

    from vlmtool.core.shards import expand_inputs, shard_refs
    from vlmtool.world import make_faults
    from vlmtool.world.faults import PWNED

    corpus = tmp_path_factory.mktemp("faults") / "corpus"
    make_faults(corpus, seed=0)
    truth = orjson.loads((corpus / "faults.json").read_bytes())
    assert truth["outcome_of"]  # the totals are those of a reader that decodes every image, as synth does
    monkeypatch.chdir(tmp_path)  # where a shell run by a shard's name would write
    for _ in range(2):  # and a rerun over it finishes the same way
        s = run_synth([str(corpus)], str(tmp_path / "o"), SynthOptions(progress=False, tasks="conversation,negative"))
        assert s["complete"] and s["failed"] == {}
        assert (s["samples"], s["samples_rejected"]) == (truth["totals"]["samples"], truth["totals"]["rejected"])
    file_of = {ref.name: Path(ref.url).name for ref in shard_refs(expand_inputs([str(corpus)]))}
    for done in (tmp_path / "o" / "_done").rglob("*.json"):
        got, want = orjson.loads(done.read_bytes()), truth["shards"][file_of[done.stem]]
        assert (got["samples"], got["ok"], got["rejected"]) == (want["samples"], want["ok"], want["rejected"]), file_of[done.stem]
        assert [(r["key"], r["reason"]) for r in got["rejects"]] == [(r["key"], r["expect"]) for r in want["records"] if r["expect"] != "ok"]
    rejects = _lines(tmp_path / "o" / "rejects.jsonl")
    assert len(rejects) == sum(truth["totals"]["rejected"].values())
    # nothing lost: every good sample got its conversation (or was answered as a duplicate of another)
    log = [r for p in (tmp_path / "o" / "log").glob("*.jsonl") for r in _lines(p)]
    good = {(file_of_name, r["key"]) for file_of_name, sh in ((n, truth["shards"][n]) for n in truth["shards"])
            for r in sh["records"] if r["expect"] == "ok"}
    asked = {(file_of[r["shard"]], r["key"]) for r in log if r["task"] == "conversation"}
    assert asked == good and len(good) == truth["totals"]["ok"]
    assert not [p for root in (tmp_path, corpus.parent) for p in root.rglob(f"{PWNED}*")]


def test_changed_vocabulary_or_prompt_files_are_refused_on_resume(tmp_path):
    from vlmtool.errors import UsageError

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("zebra\n")
    photos = _photo_shards(tmp_path / "p", PHOTO_CAPTIONS[:2])
    opts = SynthOptions(progress=False, tasks="negative", vocabulary=str(vocab))
    assert run_synth([str(photos)], str(tmp_path / "o"), opts)["instructions"] == 2
    vocab.write_text("kite\n")
    with pytest.raises(UsageError, match="--vocabulary file contents"):
        run_synth([str(photos)], str(tmp_path / "o"), opts)
    vocab.write_text("zebra\n")
    assert run_synth([str(photos)], str(tmp_path / "o"), opts)["instructions"] == 2


def _reference_output(out, inputs, format="llava"):
    """instructions.jsonl and the request totals as synth wrote them when it held every log row
    in memory (the reference the streaming finalize must match byte for byte)."""
    from vlmtool.core.shards import dumps, expand_inputs, shard_refs
    from vlmtool.synth.job import to_record
    from vlmtool.synth.tasks import TASKS

    rank = {"ok": 3, "rejected": 2, "failed": 1}
    done = {}
    for p in sorted((out / "log").glob("requests-*.jsonl")):
        for line in p.read_bytes().split(b"\n"):
            try:
                row = orjson.loads(line) if line else None
            except orjson.JSONDecodeError:
                continue
            if not isinstance(row, dict) or row.get("status") not in rank or not isinstance(row.get("id"), str):
                continue
            old = done.get(row["id"])
            if old is None or rank[row["status"]] >= rank[old["status"]]:
                done[row["id"]] = row
    index = {r.name: r.index for r in shard_refs(expand_inputs(inputs))}
    order = {t: i for i, t in enumerate(TASKS)}
    ok = sorted((r for r in done.values() if r["status"] == "ok"), key=lambda r: (index.get(r["shard"], 1 << 30), r["order"], order[r["task"]]))
    by = Counter(f"{r['status']}:{r['reason']}" for r in done.values() if r["status"] != "ok")
    totals = {"requests": len(done), "ok": len(ok), "retries": sum(r.get("retries", 0) for r in done.values()),
              "by_task": dict(Counter(r["task"] for r in ok)),
              "rejected": {k.split(":", 1)[1]: v for k, v in by.items() if k.startswith("rejected:")},
              "failed": {k.split(":", 1)[1]: v for k, v in by.items() if k.startswith("failed:")}}
    return b"".join(dumps(to_record(r, format)) + b"\n" for r in ok), totals


def _old_duplicate_rule_holds(out):
    """Replays the logs in the order they were written with the old in-memory rule (every
    answer of every sample kept as text): an ok answer was new, a duplicate was seen before."""
    from vlmtool.synth.validate import normalize

    seen = set()
    for p in sorted((out / "log").glob("requests-*.jsonl")):
        for row in _lines(p) if p.name == "requests-00000.jsonl" else []:  # (the other: the torn line alone)
            if row["status"] == "failed" or (row["status"] == "rejected" and row["reason"] != "duplicate"):
                continue
            keys = [k for t in row["turns"] for k in [f"{row['key']}\x1f{normalize(t['answer'])}"]
                    + ([normalize(t["answer"])] if len(t["answer"]) >= 150 else [])]
            assert any(k in seen for k in keys) == (row["status"] == "rejected"), row["id"]
            seen.update(keys)


def test_streamed_finalize_matches_the_in_memory_one_with_duplicates_and_retried_failures(small_world, tmp_path, monkeypatch):
    """Several shards, answers rejected as duplicates (within a sample and long ones across
    samples), requests that failed then succeeded under --retry-failed, and a torn last log
    line: instructions.jsonl and the totals are those of the in-memory reference."""
    from vlmtool.synth.teachers import CaptionsTeacher

    real = CaptionsTeacher.turns

    def flaky(self, req):
        if req.sample_key.endswith("7") and req.task == "reasoning":
            raise RuntimeError("teacher down")
        t = real(self, req)
        if req.task == "detail":  # the same long answer for every sample: a duplicate anywhere but the first
            t = [{**x, "answer": "A long answer that every sample gets. " * 5} for x in t]
        return t

    monkeypatch.setattr(CaptionsTeacher, "turns", flaky)
    out, inputs = tmp_path / "o", [str(small_world)]
    s = run_synth(inputs, str(out), SynthOptions(progress=False, max_failed=1.0))
    assert s["failed"].get("teacher_error", 0) > 0 and s["rejected"].get("duplicate", 0) > 0
    monkeypatch.setattr(CaptionsTeacher, "turns", real)
    for _ in range(2):  # the retry, then a rerun over logs one of which (a killed rank's) ends in a torn line
        s = run_synth(inputs, str(out), SynthOptions(progress=False, max_failed=1.0, retry_failed=True))
        want, totals = _reference_output(out, inputs)
        assert (out / "instructions.jsonl").read_bytes() == want
        assert {k: s[k] for k in totals} == {k: v for k, v in totals.items()} | {"rejected": dict(sorted(totals["rejected"].items()))}
        assert s["failed"] == {} and not list(out.glob("_spill*"))
        (out / "log" / "requests-00001.jsonl").write_bytes(b'{"id": "torn", "status": "ok", "tur')
    _old_duplicate_rule_holds(out)


def test_captions_conversations_ask_balanced_probes_in_no_fixed_order(tmp_path):
    """The captions teacher's conversation asks POPE's balance: as many presence probes answered
    no (distinct absent objects, one per setting) as answered yes (objects that are there), up
    to 3 each, and no position tells the answer: over the rows, the first probe is sometimes a
    yes and sometimes a no."""
    import re

    make_world(tmp_path / "w", samples=60, shard_size=30, seed=8, sizes="square")
    run_synth([str(tmp_path / "w")], str(tmp_path / "o"), SynthOptions(progress=False, tasks="conversation"))
    truth = {}
    for tar in sorted((tmp_path / "w").glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf:
                if m.name.endswith(".json"):
                    truth[m.name.split(".")[0]] = {o["shape"] for o in orjson.loads(tf.extractfile(m).read())["objects"]}
    asked = re.compile(r"(?:<image>\n)?Is there an? (.+) in the image\?")
    first, sizes = set(), set()
    for row in _lines(tmp_path / "o" / "instructions.jsonl"):
        conv = row["conversations"]
        probes = [(asked.fullmatch(q["value"]).group(1), a["value"].startswith("Yes")) for q, a in zip(conv[::2], conv[1::2])
                  if asked.fullmatch(q["value"])]
        yes, no = [o for o, y in probes if y], [o for o, y in probes if not y]
        present = truth[row["key"]]
        assert len(yes) == len(no) == min(3, len(present)) and set(yes) <= present and not set(no) & present, (row["key"], probes)
        assert len(set(no)) == len(no)
        first.add(probes[0][1])
        sizes.add(len(yes))
    assert first == {True, False} and sizes == {1, 2, 3}


def test_the_probes_task_asks_balanced_presence_questions_and_a_wrong_answer_is_rejected(tmp_path):
    """--tasks probes: one conversation of presence probes only, yes for objects that are there
    and no for absent ones in equal numbers; a teacher that answers one against the truth is
    rejected as wrong_probe."""
    make_world(tmp_path / "w", samples=40, shard_size=40, seed=9, sizes="square")
    s = run_synth([str(tmp_path / "w")], str(tmp_path / "o"), SynthOptions(progress=False, tasks="probes"))
    rows = list(_lines(tmp_path / "o" / "instructions.jsonl"))
    assert s["instructions"] == len(rows) == 40 and {r["task"] for r in rows} == {"probes"}
    for r in rows:
        answers = [t["value"].rstrip(".") for t in r["conversations"][1::2]]
        assert answers.count("Yes") == answers.count("No") >= 1 and len(answers) <= 6
    present = ["heart", "oval"]
    turns = [{"question": "Is there a heart in the image?", "answer": "Yes, there is a heart in the image."},
             {"question": "Is there a star in the image?", "answer": "Yes, there is a star."}]
    with pytest.raises(Rejected) as e:
        validate(turns, "probes", present, ["heart", "oval", "star"], absents=("star",))
    assert e.value.reason == "wrong_probe"
    ok = [turns[0], {"question": "Is there a star in the image?", "answer": "No, there is no star in the image."}]
    assert validate(ok, "probes", present, ["heart", "oval", "star"], absents=("star",)) == ok


def _presence_asked(out):
    """(task, sample key) -> [(object, answer is yes)] of the presence questions in instructions.jsonl."""
    asked = re.compile(r"(?:<image>\n)?Is there an? (.+) in the image\?")
    out_ = {}
    for row in _lines(out / "instructions.jsonl"):
        conv = row["conversations"]
        out_[row["task"], row["key"]] = [(m.group(1), a["value"].startswith("Yes")) for q, a in zip(conv[::2], conv[1::2])
                                         if (m := asked.fullmatch(q["value"]))]
    return out_


def _presence_leads(asked):
    """(task, object) -> yes answers minus no answers."""
    lead = Counter()
    for (task, _), pairs in asked.items():
        for label, yes in pairs:
            lead[task, label] += 1 if yes else -1
    return lead


def test_balance_asks_about_each_object_as_often_yes_as_no_and_a_rerun_draws_the_same(tmp_path):
    """POPE's popular negatives drawn alone teach "a frequent object: no", a prior a blind model
    reads off POPE's popular setting. --balance present chooses which objects that are there
    are asked (those whose noes lead) and keeps POPE's negatives; --balance all also passes
    over a negative whose noes lead, per task and shard: no object's yes and no answers then
    differ by more than a few. A rerun after a crash replays the draws (the counts are made in
    the shard's order), so it writes the same pairs."""
    make_world(tmp_path / "w", samples=160, shard_size=80, seed=31)
    opts = dict(progress=False, tasks="conversation=1000,negative=1000,probes=1000", per_sample=3)
    asked, leads = {}, {}
    for balance in ("none", "present", "all"):
        run_synth([str(tmp_path / "w")], str(tmp_path / balance), SynthOptions(balance=balance, **opts))
        asked[balance] = _presence_asked(tmp_path / balance)
        leads[balance] = _presence_leads(asked[balance])
    per_object = {b: Counter() for b in leads}
    for b, lead in leads.items():
        for (_, label), v in lead.items():
            per_object[b][label] += v
    assert len(per_object["all"]) >= 16 and all(sum(c.values()) == 0 for c in per_object.values())
    # present: the same negatives as POPE's draw, other objects asked with yes
    noes = {b: {k: sorted(o for o, yes in v if not yes) for k, v in a.items()} for b, a in asked.items()}
    assert noes["present"] == noes["none"] != noes["all"]
    assert asked["present"] != asked["none"]
    # measured (seeds 31, 32): the largest lead of one object in one task 9 and 5 with all, 50 and
    # 42 with present, 62 and 52 with none; |lead| summed over the objects 50 and 30, 144 and 176,
    # 178 and 198
    task_max = {b: max(abs(v) for v in lead.values()) for b, lead in leads.items()}
    spread = {b: sum(abs(v) for v in c.values()) for b, c in per_object.items()}
    assert task_max["all"] <= 12 and task_max["none"] >= 30, task_max
    assert spread["all"] < 0.6 * spread["present"] and spread["present"] < spread["none"], spread
    # a crash halfway through the first shard: its first results kept, no shard finished -> the same pairs
    out = tmp_path / "all"
    first = sorted(x for x in (out / "instructions.jsonl").read_bytes().splitlines())
    for p in (out / "log").glob("*.jsonl"):
        lines = p.read_bytes().splitlines(keepends=True)
        p.write_bytes(b"".join(lines[: len(lines) // 4 + 1]))
    for p in [*(out / "_done").glob("*.json"), out / "instructions.jsonl", out / "manifest.json"]:
        p.unlink()
    s = run_synth([str(tmp_path / "w")], str(out), SynthOptions(balance="all", **opts))
    ids = [orjson.loads(x)["id"] for p in (out / "log").glob("*.jsonl") for x in p.read_bytes().splitlines()]
    assert len(ids) == len(set(ids)) == s["requests"]  # the kept half was asked again by no request
    assert sorted((out / "instructions.jsonl").read_bytes().splitlines()) == first
