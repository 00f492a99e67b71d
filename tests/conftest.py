"""Fixtures built on the real parts in support.py, and a guard against threads that outlive a test."""

from __future__ import annotations

import threading

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
