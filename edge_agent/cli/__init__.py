"""The `edge-agent` command. Errors meant for users end here as one clear message and an exit status:
0 ok, 1 a failure while running, 2 bad configuration, arguments or input files. Anything else is a
bug and is logged with its traceback (exit 1).

Board commands (run, check-config, inspect, bench, demo) are in board.py; workstation commands
(convert, keys, bundle, edgetpu-check) in workstation.py; model delivery (push, models) in
delivery.py; fleet discovery (fleet list, the group lookup) in fleet.py. Each command's arguments are in one `add_<command>(commands)` function beside its
handler; the implementations live in the packages they belong to (service/, host/, delivery/).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from edge_agent import __version__
from edge_agent.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, EdgeAgentError

logger = logging.getLogger("edge_agent")

DEFAULT_BROKER = "localhost:1883"
BROKER_HELP = f"MQTT broker HOST:PORT (default {DEFAULT_BROKER})"

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "broker_address", "fail", "main", "make_parser"]


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    setup_logging(getattr(args, "log_level", None) or "info")
    try:
        return args.handler(args)
    except EdgeAgentError as err:
        return fail(str(err), err.exit_status)
    except KeyboardInterrupt:
        return EXIT_FAILED
    except Exception:  # not one of ours: a bug, which the traceback helps to find
        logger.exception("edge-agent %s failed unexpectedly (a bug: please report it with this traceback)", args.command)
        return EXIT_FAILED


def make_parser() -> argparse.ArgumentParser:
    from edge_agent.cli import board, delivery, fleet, workstation

    parser = argparse.ArgumentParser(prog="edge-agent", description="On-device TFLite inference daemon.")
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    board.register(commands)  # run, inspect, check-config, bench, demo (and the hidden ones)
    workstation.register(commands)  # convert, keys, bundle, edgetpu-check
    delivery.register(commands)  # push, models
    fleet.register(commands)  # fleet list
    return parser


def fail(message: str, status: int = EXIT_USAGE) -> int:
    """Print one error line for the user; the exit status to return."""
    print(f"edge-agent: {message}", file=sys.stderr)
    return status


def broker_address(text: str) -> tuple[str, int]:
    """HOST:PORT (an argparse type): ("host", port); "[::1]:1883" gives ("::1", 1883)."""
    host, _, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with a port from 1 to 65535, got {text!r}")
    return host, int(port)


def setup_logging(level: str) -> None:
    # Under systemd, journald adds time and unit; elsewhere people want timestamps.
    if os.environ.get("JOURNAL_STREAM"):
        fmt = "%(levelname)s %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=getattr(logging, level.upper()), format=fmt, stream=sys.stderr)
    logging.getLogger("edge_agent.paho").setLevel(logging.WARNING)
