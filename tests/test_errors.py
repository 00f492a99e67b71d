"""One root for the project's errors, and the CLI's edge: our errors end as one message with their
exit status; anything else is a bug, logged with its traceback (exit 1), never called bad input."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import edge_agent
from support import REPO
from edge_agent.cli import board, main
from edge_agent.errors import EXIT_FAILED, EXIT_USAGE, EdgeAgentError, InputError


def project_modules():
    for info in pkgutil.walk_packages(edge_agent.__path__, "edge_agent."):
        if info.name.endswith("__main__"):
            continue
        yield importlib.import_module(info.name)


def test_every_error_class_of_the_project_derives_from_edge_agent_error():
    errors = {
        f"{module.__name__}.{name}": cls
        for module in project_modules()
        for name, cls in vars(module).items()
        if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == module.__name__
    }
    assert len(errors) >= 25, sorted(errors)  # ConfigError, ModelFileError, BundleError, ... all found
    strays = [name for name, cls in errors.items() if not issubclass(cls, EdgeAgentError)]
    assert strays == []


def test_errors_keep_their_older_bases():
    from edge_agent.config import ConfigError
    from edge_agent.delivery.bundle import BundleTrustError
    from edge_agent.runtime import ModelFileError, ModelLoadError

    assert issubclass(ConfigError, ValueError) and issubclass(ModelFileError, ValueError)
    assert issubclass(ModelLoadError, RuntimeError) and issubclass(BundleTrustError, ValueError)
    assert ConfigError(["x"]).exit_status == EXIT_USAGE


@pytest.mark.parametrize(
    "raised, status",
    [(InputError("the file is wrong: fix it"), EXIT_USAGE), (EdgeAgentError("the broker went away"), EXIT_FAILED)],
)
def test_our_errors_end_as_one_line_with_their_status(monkeypatch, capsys, raised, status):
    def handler(args):
        raise raised

    monkeypatch.setattr(board, "inspect_command", handler)
    assert main(["inspect", "model.tflite"]) == status
    err = capsys.readouterr().err
    assert err == f"edge-agent: {raised}\n"


def test_anything_else_is_a_bug_logged_with_its_traceback(monkeypatch, caplog):
    def handler(args):
        raise ValueError("an index went wrong")  # what used to be caught and called "bad input"

    monkeypatch.setattr(board, "inspect_command", handler)
    assert main(["inspect", "model.tflite"]) == EXIT_FAILED
    (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "a bug" in record.getMessage() and record.exc_info[0] is ValueError


@pytest.mark.parametrize("command", ["demo", "push x.eab --device d", "models rollback --device d", "run --model m --source 0",
                                     "bench"])
@pytest.mark.parametrize("broker", ["nohost", "h:99999", "h:x", ":1883", "h:0"])
def test_a_bad_broker_address_is_a_clear_usage_error(command, broker):
    result = subprocess.run([sys.executable, "-m", "edge_agent", *command.split(), "--broker", broker],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"--broker: expected HOST:PORT with a port from 1 to 65535, got {broker!r}" in result.stderr
