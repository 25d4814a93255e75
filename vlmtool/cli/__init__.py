"""The vlmtool command line: one small module per subcommand, each calling one job.

stdout carries data only (the --json summary, JSONL rows, the table a command was asked for);
bars and logs go to stderr. A user error prints one line and exits 2 (usage) or 1 (job failed).
Heavy modules (torch, open_clip, av) are imported inside the commands that use them.
"""

from __future__ import annotations

import sys

# Each module registers its commands; the import order is the order of `vlmtool --help`.
from vlmtool.cli import world, inspect, clip, synth, export, encode, budget, train, evaluate, export_model, demo  # noqa: F401, I001
from vlmtool.cli._app import app
from vlmtool.errors import UsageError, VlmtoolError

def main() -> None:
    try:
        app(prog_name="vlmtool")
    except VlmtoolError as e:
        print(f"vlmtool: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except BrokenPipeError:  # `vlmtool ... | head`: the reader has all it wanted
        _quiet_exit()
    except SystemExit as e:
        # click turns a closed stdout (EPIPE) into exit 1 after wrapping the streams; a reader
        # that stopped early is not a failure (scripts with `set -o pipefail` rely on that)
        if e.code == 1 and type(sys.stdout).__name__ == "PacifyFlushWrapper":  # click's (or typer's vendored click's)
            _quiet_exit()
        raise


def _quiet_exit() -> None:
    import os

    try:  # stdout is gone: point it at /dev/null so the interpreter's final flush stays silent
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    sys.exit(0)


__all__ = ["app", "main", "UsageError"]
