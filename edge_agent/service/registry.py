"""The set of pipelines an agent runs: one owner, read through snapshots.

The main loop, the state message, the model installer and the probation watcher read the set
from their own threads while reloads and model installs change it. Writers replace a whole new
mapping under a short lock (never while loading a model); readers take the current mapping
without any lock and can iterate it while it is being replaced.
"""

from __future__ import annotations

import threading
from types import MappingProxyType
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from edge_agent.service.pipeline import Pipeline


class PipelineRegistry:
    """Running pipelines by name, and those that could not start with the reason."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: Mapping[str, Pipeline] = MappingProxyType({})
        self._failed: Mapping[str, str] = MappingProxyType({})

    def running(self) -> Mapping[str, Pipeline]:
        """A snapshot: later changes do not show in it."""
        return self._running

    def failed(self) -> Mapping[str, str]:
        return self._failed

    def get(self, name: str) -> Pipeline | None:
        return self._running.get(name)

    def put(self, name: str, pipeline: Pipeline) -> Pipeline | None:
        """Run `pipeline` under `name` (no longer failed); returns the pipeline it replaces."""
        with self._lock:
            running = dict(self._running)
            old = running.get(name)
            running[name] = pipeline
            self._running = MappingProxyType(running)
            self._drop_failed(name)
        return old

    def remove(self, name: str) -> Pipeline | None:
        """Forget `name` (running or failed); returns the pipeline that ran under it."""
        with self._lock:
            running = dict(self._running)
            old = running.pop(name, None)
            self._running = MappingProxyType(running)
            self._drop_failed(name)
        return old

    def mark_failed(self, name: str, reason: str) -> None:
        """`name` could not start; it stays listed with `reason` until it starts or is removed."""
        with self._lock:
            self._failed = MappingProxyType({**self._failed, name: reason})

    def _drop_failed(self, name: str) -> None:
        if name in self._failed:
            self._failed = MappingProxyType({key: value for key, value in self._failed.items() if key != name})
