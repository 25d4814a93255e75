"""The one exception users see: a message that says what to do, and an exit code."""


class VlmtoolError(Exception):
    """A failure the user can act on. The CLI prints the message without a traceback."""

    exit_code = 1


class UsageError(VlmtoolError):
    """Bad arguments or inputs named on the command line (exit 2)."""

    exit_code = 2


class JobFailed(VlmtoolError):
    """A job stopped: --strict met a bad sample, a shard could not be written, ..."""

    exit_code = 1
