from conftest import run_cli


def test_help_lists_every_command():
    out = run_cli("--help").stdout
    for cmd in ("world", "inspect", "demo"):
        assert cmd in out


def test_every_command_has_help():
    out = run_cli("--help").stdout
    cmds = [line.split()[0] for line in out.split("Commands:")[1].splitlines() if line.strip() and not line.startswith("╰")]
    for cmd in cmds:
        if cmd.isidentifier() or "-" in cmd:
            assert run_cli(cmd, "--help").returncode == 0


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
