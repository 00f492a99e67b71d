"""Fixtures built on the real parts in support.py; guards against threads that outlive a test
and against TensorFlow used by a test not marked `tensorflow`."""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path
from types import ModuleType

import pytest

from support import AgentProcess, Broker, Collector, MjpegServer, wait_until


@pytest.fixture(autouse=True)
def no_thread_outlives_the_test():
    before = set(threading.enumerate())
    yield
    wait_until(lambda: not (set(threading.enumerate()) - before), 5)
    leftover = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not leftover, f"threads outlived the test: {leftover}"


@pytest.fixture(scope="session")
def session_broker(tmp_path_factory):
    broker = Broker(tmp_path_factory.mktemp("broker")).start()
    yield broker
    broker.stop()


@pytest.fixture
def broker(tmp_path):
    """A broker of the test's own, for tests that stop or restart it."""
    broker = Broker(tmp_path)
    yield broker
    broker.stop()


@pytest.fixture
def collect():
    collectors: list[Collector] = []

    def make(broker: Broker, topics: list[str]) -> Collector:
        collector = Collector(broker, topics)
        collectors.append(collector)
        return collector

    yield make
    for collector in collectors:
        collector.stop()


@pytest.fixture
def agent_process(tmp_path):
    processes: list[AgentProcess] = []

    def start(*args: str, env: dict | None = None) -> AgentProcess:
        process = AgentProcess(list(args), tmp_path, env)
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.kill()


@pytest.fixture
def mjpeg_server():
    """A started MjpegServer at 30 fps, stopped after the test."""
    server = MjpegServer().start()
    yield server
    server.stop()


# --- markers (registered in pyproject.toml) ----------------------------------------------------
# `tensorflow` must be on every test that imports TensorFlow, so `make test-fast`
# (-m "not slow and not tensorflow") never pays for it; the two guards below keep that true.
TENSORFLOW_PACKAGES = ("tensorflow", "keras", "tf_keras")
_TOP_LEVEL_TENSORFLOW_IMPORT = re.compile(rf"^(?:import|from) ({'|'.join(TENSORFLOW_PACKAGES)})\b", re.M)


def _deselects_tensorflow(config: pytest.Config) -> bool:
    """True when the -m expression leaves out a test marked only `tensorflow`."""
    expression = config.getoption("markexpr", "")
    if not expression:
        return False
    try:
        from _pytest.mark.expression import Expression  # pytest's own parser for -m
    except ImportError:  # a pytest without it: collect everything (slower, still correct)
        return False
    return not Expression.compile(expression).evaluate(lambda name, **kwargs: name == "tensorflow")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Do not even import a test module that imports TensorFlow at its top when -m leaves its
    tests out: importing TensorFlow costs seconds and ~0.5 GB before anything is deselected."""
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_") and _deselects_tensorflow(config):
        if _TOP_LEVEL_TENSORFLOW_IMPORT.search(collection_path.read_text(encoding="utf-8")):
            return True
    return None


def _imports_tensorflow(module: ModuleType | None) -> bool:
    return module is not None and any(
        isinstance(value, ModuleType) and value.__name__.partition(".")[0] in TENSORFLOW_PACKAGES
        for value in vars(module).values()
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = sorted({item.nodeid.split("::")[0] for item in items
                       if _imports_tensorflow(getattr(item, "module", None)) and item.get_closest_marker("tensorflow") is None})
    if unmarked:
        raise pytest.UsageError(f"{', '.join(unmarked)} import TensorFlow: add `pytestmark = pytest.mark.tensorflow`")


_TENSORFLOW_LOADED_BEFORE = pytest.StashKey[bool]()


def _tensorflow_loaded() -> list[str]:
    return [name for name in TENSORFLOW_PACKAGES if name in sys.modules]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_TENSORFLOW_LOADED_BEFORE] = bool(_tensorflow_loaded())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """A test whose fixtures or body import TensorFlow must be marked too. Only the first such
    import is seen in a full run (it stays loaded); `make test-fast` sees every one."""
    result = yield
    loaded = _tensorflow_loaded()
    if loaded and not item.stash.get(_TENSORFLOW_LOADED_BEFORE, True) and item.get_closest_marker("tensorflow") is None:
        raise pytest.fail.Exception(f"this test imported {', '.join(loaded)}: mark it @pytest.mark.tensorflow", pytrace=False)
    return result
