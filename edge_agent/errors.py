"""The root of every error edge-agent raises on purpose, and the exit statuses of the command.

An `EdgeAgentError` carries a message meant for the user (what was wrong, what to do); the
edges (the CLI, the top of a thread loop) print or log that message alone. Anything else that
reaches an edge is a bug: it is logged with its traceback. Each error class keeps its older
base too (ValueError, RuntimeError, ...), so code written against those keeps working.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # a failure while running (a broker that cannot be reached, a model that fails its gate)
EXIT_USAGE = 2  # bad configuration, arguments or input files: the user has something to fix


class EdgeAgentError(Exception):
    """An error whose message is meant for the user; `exit_status` is what the CLI exits with."""

    exit_status: int = EXIT_FAILED


class InputError(EdgeAgentError):
    """The user's configuration, arguments or input files are wrong (exit status 2)."""

    exit_status = EXIT_USAGE


__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "EdgeAgentError", "InputError"]
