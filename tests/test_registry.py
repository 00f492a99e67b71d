"""The pipeline registry: snapshots that readers on other threads can iterate while writers change the set."""

from __future__ import annotations

import threading

from edge_agent.service.registry import PipelineRegistry


def test_a_snapshot_does_not_change_under_its_reader():
    registry = PipelineRegistry()
    registry.put("a", "pipeline a")
    registry.mark_failed("b", "model missing")
    running, failed = registry.running(), registry.failed()
    registry.put("b", "pipeline b")
    registry.remove("a")
    assert dict(running) == {"a": "pipeline a"} and dict(failed) == {"b": "model missing"}
    assert dict(registry.running()) == {"b": "pipeline b"} and dict(registry.failed()) == {}, "starting clears the failure"
    registry.mark_failed("c", "bad source")
    assert registry.remove("c") is None and dict(registry.failed()) == {}
    try:
        registry.running()["x"] = "y"
    except TypeError:
        pass
    else:
        raise AssertionError("a snapshot must be read-only")


def test_readers_iterate_while_another_thread_changes_the_set():
    registry = PipelineRegistry()
    errors: list[BaseException] = []
    done = threading.Event()

    def change() -> None:
        for i in range(20_000):
            registry.put(f"p{i % 50}", i)
            if i % 3 == 0:
                registry.remove(f"p{(i * 7) % 50}")
            if i % 5 == 0:
                registry.mark_failed(f"f{i % 20}", "reason")
        done.set()

    def read() -> None:
        try:
            while not done.is_set():
                for _name, _pipeline in registry.running().items():
                    pass
                for _name, _reason in registry.failed().items():
                    pass
        except BaseException as err:  # "dictionary changed size during iteration" with a shared dict
            errors.append(err)

    threads = [threading.Thread(target=change, name="registry-writer")] + [
        threading.Thread(target=read, name=f"registry-reader-{n}") for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
