"""The README's and docs' examples: every `vlmtool ...` line names a real command and real
options, and the examples that need no data run and print what they say."""

import re
import shlex

import pytest

from conftest import ROOT, run_cli

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _examples() -> list[tuple[str, str]]:
    """(file, command line) of every indented or fenced line that starts with `vlmtool ` or
    `torchrun ... -m vlmtool` (comments after two spaces and a # cut off)."""
    out = []
    for doc in DOCS:
        for line in doc.read_text().splitlines():
            s = line.strip()
            s = re.sub(r"\s{2,}#.*$", "", s)
            m = re.search(r"(?:^|-m )vlmtool (.*)$", s)
            if m and (line.startswith("    ") or line.startswith("vlmtool")) and not s.startswith(("`", "|")):
                out.append((doc.name, "vlmtool " + m.group(1).rstrip("\\").strip()))
    return out


def _command(words: list[str]):
    import typer.main

    from vlmtool.cli import app

    cmd = typer.main.get_command(app)
    i = 1
    while hasattr(cmd, "commands") and i < len(words) and words[i] in cmd.commands:
        cmd = cmd.commands[words[i]]
        i += 1
    return cmd, words[:i]


EXAMPLES = _examples()


def test_the_docs_have_examples():
    assert len(EXAMPLES) >= 20


@pytest.mark.parametrize("doc, line", EXAMPLES, ids=[f"{d}:{i}" for i, (d, _) in enumerate(EXAMPLES)])
def test_every_example_names_a_real_command_and_real_options(doc, line):
    words = shlex.split(line.replace("|", " | ").split(" | ")[0])
    cmd, path = _command(words)
    assert not hasattr(cmd, "commands") or path == words[:1], f"{doc}: {line}: no such command"
    known = {o for p in cmd.params for o in (*p.opts, *getattr(p, "secondary_opts", []))}
    for w in words[len(path):]:
        if w.startswith("-") and w != "-":
            assert w.split("=", 1)[0] in known, f"{doc}: `{line}` uses {w}, which `{' '.join(path)}` does not take"


QUICK = [line for _, line in EXAMPLES if line.startswith("vlmtool budget --size")]


@pytest.mark.parametrize("line", QUICK)
def test_the_quick_budget_examples_run_and_print_rows(line):
    words = shlex.split(line)[1:]
    p = run_cli(*words)
    lines = p.stdout.strip().splitlines()
    assert lines, p.stderr
    if "--json" in words:
        import json

        assert all(json.loads(x)["tokens"] > 0 for x in lines)
    else:
        assert lines[0].split()[0] in ("image", "video") and len(lines) >= 2
