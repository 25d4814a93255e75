from conftest import run_cli


def _commands():
    """Every command and subcommand of the CLI, as (path, click command)."""
    import typer.main

    from vlmtool.cli import app

    def walk(cmd, path):
        subs = getattr(cmd, "commands", None)
        if not subs:
            yield path, cmd
            return
        for name, sub in subs.items():
            yield from walk(sub, path + [name])

    return list(walk(typer.main.get_command(app), []))


def test_help_lists_every_command():
    out = run_cli("--help").stdout
    for path, _ in _commands():
        assert path[0] in out


def test_every_command_and_option_has_help():
    for path, cmd in _commands():
        p = run_cli(*path, "--help")
        assert p.returncode == 0 and "Usage:" in p.stdout, path
        assert cmd.help, f"{' '.join(path)} has no help text"
        for param in cmd.params:
            assert getattr(param, "help", None), f"{' '.join(path)} {param.opts[0]} has no help text"
        assert "<list[str]>" not in p.stdout and "{out}" not in p.stdout


def test_a_reader_that_stops_early_is_not_a_failure():
    import subprocess
    import sys

    sizes = [a for i in range(1, 4000) for a in ("--size", f"{i}x100")]
    proc = subprocess.Popen([sys.executable, "-m", "vlmtool", "budget", *sizes, "-m", "qwen2-vl"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # like `| head -1`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err and "Exception ignored" not in err


def test_human_summary_has_no_python_reprs():
    from conftest import FIXTURES

    p = run_cli("inspect", FIXTURES / "shapes", "--no-progress")
    out = p.stdout  # the result is on stdout (`vlmtool inspect ... > summary.txt`), the logs on stderr
    assert "complete: yes" in out and "out: -" in out and "complete:" not in p.stderr
    for repr_ in ("None", "True", "False", "['", "{'"):
        assert repr_ not in out, repr_


def test_version():
    assert run_cli("--version").stdout.startswith("vlmtool ")


def test_missing_input_is_a_one_line_usage_error(tmp_path):
    p = run_cli("inspect", tmp_path / "nope.tar", check=False)
    assert p.returncode == 2
    assert "does not exist" in p.stderr and "Traceback" not in p.stderr
    assert p.stdout == ""


def test_unknown_option_exits_2():
    assert run_cli("inspect", "--frobnicate", check=False).returncode == 2


def test_out_folder_of_another_job_is_refused(tmp_path, faulty_world):
    from conftest import FIXTURES

    run_cli("inspect", FIXTURES / "shapes", "--out", tmp_path / "j", "--no-progress")
    p = run_cli("inspect", faulty_world, "--out", tmp_path / "j", "--no-progress", check=False)
    assert p.returncode == 2 and "different" in p.stderr


def test_newcomer_mistakes_get_one_line_with_the_right_hint(tmp_path):
    """A misspelt preset gets the closest names (not 40 names on a line); a feature folder or a
    CLIP folder given as a checkpoint is named for what it is."""
    p = run_cli("budget", "--size", "640x480", "-m", "qwen2vl", check=False)
    assert p.returncode == 2 and "did you mean qwen2-vl" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    feats, clip = tmp_path / "feats", tmp_path / "clip"
    feats.mkdir()
    (feats / "features.json").write_text("{}")
    clip.mkdir()
    (clip / "open_clip_config.json").write_text("{}")
    (clip / "model.safetensors").write_bytes(b"")
    for folder, what in ((feats, "a feature folder"), (clip, "a CLIP model folder")):
        p = run_cli("infer", "-c", folder, "--image", folder, "-q", "x", "--device", "cpu", check=False)
        assert p.returncode == 2 and what in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_top_level_help_names_every_command():
    out = run_cli("--help").stdout
    for cmd in ("world", "inspect", "clip-train", "filter", "synth", "budget", "encode", "train", "infer", "eval", "export",
                "export-model", "demo"):
        assert f" {cmd} " in out or f"\n  {cmd}" in out, cmd


def test_usage_lines_write_arguments_plainly():
    for cmd, want in ((("inspect",), "INPUTS..."), (("budget",), "[INPUT]..."), (("eval", "pope"), "[INPUTS]...")):
        first = run_cli(*cmd, "--help").stdout.splitlines()[0]
        assert first.endswith(want) and "{" not in first, first


def test_the_demo_prints_its_table_on_stdout(monkeypatch):
    """`vlmtool demo > out.txt` holds the result: the POPE table and the summary lines, on stdout;
    (the pipeline itself is tests/test_demo.py's: here its summary is given)."""
    from typer.testing import CliRunner

    import vlmtool.demo
    from vlmtool.cli import app

    metrics = {"accuracy": 0.9, "precision": 0.88, "recall": 0.92, "f1": 0.9, "yes_ratio": 0.52, "n": 120}
    summary = {"demo": "d", "checkpoint": "d/stage2", "pope": {s: metrics for s in ("random", "popular", "adversarial")},
               "blind": {s: {**metrics, "f1": 0.5} for s in ("random", "popular", "adversarial")},
               "swap": {"flip_rate": 0.85, "both_correct": 0.8, "pairs": 40}, "chair": {"chair_i": 0.07, "chair_s": 0.15, "descriptions": 60},
               "steps": {}}
    monkeypatch.setattr(vlmtool.demo, "run_demo", lambda out, opts: summary)
    r = CliRunner().invoke(app, ["demo", "--out", "x", "--no-progress"], catch_exceptions=False)
    assert r.exit_code == 0
    out = r.stdout
    assert "adversarial" in out and "0.900" in out and "swap: both_correct 0.800 (flip_rate 0.850, wrong_way -) over 40 pairs" in out
    assert "checkpoint: d/stage2" in out
