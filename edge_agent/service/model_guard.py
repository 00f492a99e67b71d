"""Every model the agent loads is loaded first in a child process, whatever its origin.

A damaged model can kill the process that builds its interpreter (measured: byte-mutated copies of
the demo model crashed tflite-runtime 2.14 with SIGSEGV; a required input marked omitted, which no
reader can fault, crashes LiteRT 2.3 and tflite-runtime alike). runtime/tflite_verify.py
refuses what a reader can see is wrong; this module catches the rest: before the agent builds a
pipeline's model (at start, on reload) the self-test child (service/selftest.py) builds the same file
and runs a frame through it, so a model that crashes the interpreter takes down only the child and is
refused with "the model crashed the interpreter (signal 11) ...", while the other pipelines start.

Start-up stays quick:
  - `prefetch` starts the checks of all pipelines at once, in parallel children (one per core), while the agent makes
    its sinks and imports the runtime (the parent's own loading), before it needs the first verdict;
  - a model whose checks passed before is not checked again: the SHA-256 of its bytes (with the runtime,
    its version, the delegate and threads) is kept in `{state_dir}/verified-models.json` (at most
    CACHE_ENTRIES). Whoever can write that file could skip the check; they could replace the models
    in the same state directory too.
The agent then loads exactly the bytes whose hash was checked (`OpenedModel`), not the file again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from edge_agent import __version__
from edge_agent.atomic_file import write_file_atomically
from edge_agent.config import AgentConfig, PipelineConfig
from edge_agent.errors import EdgeAgentError
from edge_agent.service.model_source import OpenedModel, open_model
from edge_agent.service.selftest import selftest_in_child

logger = logging.getLogger(__name__)

CACHE_FILE = "verified-models.json"
CACHE_FORMAT = 1
CACHE_ENTRIES = 64
RUNTIME_MODULES = ("ai_edge_litert", "tflite_runtime")


class ModelChangedError(EdgeAgentError):
    """The file changed between the agent's read and the child's: what was checked is not what would load."""


class VerifiedModels:
    """The SHA-256s (with runtime settings) of models whose child check passed; thread-safe."""

    def __init__(self, state_dir: str):
        self.path = Path(state_dir) / CACHE_FILE
        self._lock = threading.Lock()
        self._keys: list[str] | None = None
        self._write_failed = False

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._load()

    def add(self, key: str) -> None:
        with self._lock:
            keys = [k for k in self._load() if k != key] + [key]
            self._keys = keys[-CACHE_ENTRIES:]
            data = json.dumps({"format": CACHE_FORMAT, "verified": self._keys}, indent=1).encode()
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_file_atomically(self.path, data)
            except OSError as err:
                if not self._write_failed:  # once: every start would check again, nothing worse
                    logger.warning("cannot record checked models in %s (%s): each start checks them again",
                                   self.path, err)
                self._write_failed = True

    def _load(self) -> list[str]:
        if self._keys is None:
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                keys = data["verified"] if data.get("format") == CACHE_FORMAT else []
                self._keys = [k for k in keys if isinstance(k, str)][-CACHE_ENTRIES:]
            except FileNotFoundError:
                self._keys = []
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
                logger.warning("ignoring %s (%s): its models are checked again", self.path, err)
                self._keys = []
        return self._keys


def check_key(model_sha256: str, config: PipelineConfig) -> str:
    """What a passed check vouches for: these bytes, in this runtime (and version), delegate and threads."""
    versions = [_installed(module) for module in RUNTIME_MODULES]
    facts = [model_sha256, config.runtime, versions, config.delegate.label, config.delegate.path,
             sorted((str(k), str(v)) for k, v in config.delegate.options.items()), config.num_threads, __version__]
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()


def _installed(module: str) -> str:
    """The package's dist-info folder name (it holds the version), found without importing the package
    (importing importlib.metadata alone costs ~70 ms of start-up on a busy 2-core board)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return ""
    folder = Path(next(iter(spec.submodule_search_locations))).parent
    return ",".join(sorted(entry.name for entry in folder.glob(f"{module}-*.dist-info")))


class ModelGuard:
    """Checks a pipeline's model in a child before the agent loads it (see the module docstring)."""

    def __init__(self, stop: threading.Event):
        self._stop = _StopOrClose(stop)  # a child is killed when the agent stops or the guard closes
        self._pending: dict[tuple[str, str], tuple[PipelineConfig, Future]] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._verified: dict[str, VerifiedModels] = {}  # by state_dir (one reader and writer of each file)

    def prefetch(self, agent: AgentConfig, models: list[tuple[PipelineConfig, str]]) -> None:
        """Start checking these (pipeline, model path) pairs now, all at once, and import their runtimes."""
        if not models:
            return
        with self._lock:
            if self._pool is None:
                # one child per core at most: more would not finish sooner, and each needs its model's memory
                children = min(len(models), os.cpu_count() or 1)
                self._pool = ThreadPoolExecutor(max_workers=children + 1, thread_name_prefix="model-check")
            pool = self._pool
            pool.submit(_import_runtimes, {config.runtime for config, _ in models})
            for config, path in models:
                self._pending[(config.name, path)] = (config, pool.submit(self._check, agent, config, path))

    def checked_model(self, agent: AgentConfig, config: PipelineConfig, path: str) -> OpenedModel:
        """The model at `path`, opened and verified, once its check passed; raises with the reason if not."""
        with self._lock:
            pending = self._pending.pop((config.name, path), None)
        if pending is not None and pending[0] == config:
            return pending[1].result()
        return self._check(agent, config, path)

    def close(self) -> None:
        """Kill the children of checks still running (nobody will ask for them) and wait until they ended."""
        self._stop.set()
        with self._lock:
            self._pending.clear()
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _check(self, agent: AgentConfig, config: PipelineConfig, path: str) -> OpenedModel:
        # the agent's trust rule and the model verifier (runtime/tflite_verify.py) run here, in the parent
        opened = open_model(path, agent.trusted_keys, agent.allow_unsigned_models,
                            device_key=agent.models.device_key)
        sha256 = opened.model_file.sha256
        with self._lock:
            verified = self._verified.setdefault(agent.state_dir, VerifiedModels(agent.state_dir))
        key = check_key(sha256, config)
        if key in verified:
            logger.debug("pipeline %s: model %s (sha256 %s…) passed its check before", config.name, path, sha256[:12])
            return opened
        # the child gets these very bytes through its stdin (an encrypted model never reaches a file)
        report = selftest_in_child(agent, config.name, opened, path, agent.models.selftest_timeout_s, self._stop)
        if report.get("sha256") != sha256:
            raise ModelChangedError(f"{path} changed while it was being checked: once it is written completely, "
                                    "start or reload the agent again")
        logger.info("pipeline %s: model %s passed its check in a child process in %.2f s",
                    config.name, path, report["seconds"])
        verified.add(key)
        return opened


class _StopOrClose(threading.Event):
    """Set by close(), or when the agent's stop event is."""

    def __init__(self, agent_stop: threading.Event):
        super().__init__()
        self._agent_stop = agent_stop

    def is_set(self) -> bool:
        return super().is_set() or self._agent_stop.is_set()


def _import_runtimes(runtimes: set[str]) -> None:
    """Import the interpreter packages in the background, while the children run (ImportErrors are reported
    later, by the load that needs the runtime)."""
    from edge_agent.runtime.backends import RuntimeNotAvailable, import_runtime

    for runtime in sorted(runtimes):
        try:
            import_runtime(runtime)
        except RuntimeNotAvailable:
            pass
