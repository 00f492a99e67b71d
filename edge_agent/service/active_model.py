"""A model ready to serve one pipeline: interpreter, preprocessor, labels and decoder together.

Building one does every check that can fail (file, runtime, delegate, input shape, labels,
task), so a pipeline either starts with a model that works or gets one clear error. A
pipeline can swap one ActiveModel for another between two frames.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np

from edge_agent.config import PipelineConfig
from edge_agent.preprocess import Geometry, Preprocessor
from edge_agent.records import Decoded, ModelRef  # Decoded: re-exported for callers that import it from here
from edge_agent.runtime import LoadedModel, load_model_file, parse_labels
from edge_agent.service.decoding import choose_decoder, preprocess_options
from edge_agent.service.model_source import OpenedModel, apply_manifest, open_model
from edge_agent.errors import InputError

logger = logging.getLogger(__name__)

BUFFERS_PER_MODEL = 3  # one being filled, one waiting in the slot, one being invoked
WARMUP_INVOKES = 3


class LabelsError(InputError, ValueError):
    """The labels file is missing or cannot be read (labels that do not fit the model: decode.ClassCountError)."""


class ActiveModel:
    """Everything a pipeline needs from its model; immutable once built."""

    def __init__(self, model: LoadedModel, config: PipelineConfig, labels: list[str] | None, version: str = ""):
        self.model = model
        self.ref = ModelRef(model.name, model.sha256, version)
        choice = self._make_decoder(config, labels)
        self.preprocessor = Preprocessor(model.input, preprocess_options(model, config, choice.match))
        self.task = choice.task
        self.layout = choice.match
        self.labels = choice.labels
        self._decode = choice.decode
        self._buffers: deque[np.ndarray] = deque()
        self._lock = threading.Lock()
        self.invoke_ms = self._warm_up()

    def _warm_up(self) -> float:
        """Invoke a few times on a blank input (the first invoke is slow: caches, thread pools,
        delegate set-up) and return the best time in ms, which decides how the pipeline runs."""
        buffer = self.acquire_buffer()
        times = []
        for _ in range(WARMUP_INVOKES):
            started = time.perf_counter()
            outputs = self.model.run(buffer)
            times.append((time.perf_counter() - started) * 1000.0)
        self.release_buffer(buffer)
        self.decode(outputs, self.preprocessor.geometry_for(self.preprocessor.height, self.preprocessor.width))
        return min(times)

    def acquire_buffer(self) -> np.ndarray:
        """An input-shaped buffer to prepare a frame into (reused; allocated only at start)."""
        with self._lock:
            if self._buffers:
                return self._buffers.popleft()
        return self.preprocessor.new_buffer()

    def release_buffer(self, buffer: np.ndarray) -> None:
        with self._lock:
            if len(self._buffers) < BUFFERS_PER_MODEL:
                self._buffers.append(buffer)

    def decode(self, outputs: list[np.ndarray], geometry: Geometry) -> Decoded:
        return self._decode(outputs, geometry.box_transform)

    def _make_decoder(self, config: PipelineConfig, labels: list[str] | None):
        """The one decoder for this model's output layout and the pipeline's task (chosen here, never per frame)."""
        return choose_decoder(self.model, config, labels)


def build_active_model(
    config: PipelineConfig,
    model_path: str | None = None,
    version: str = "",
    trusted_keys: tuple[str, ...] = (),
    allow_unsigned_models: bool = True,
    label: str = "",
    device_key: str = "",
    opened: OpenedModel | None = None,
) -> ActiveModel:
    """Load the pipeline's model (a .tflite, or a bundle verified per model_source's trust rule, decrypted
    with `device_key` when encrypted) and check that it fits the pipeline; raise a specific error if not
    (naming the file as `label` if given). `opened`: the model already opened and checked
    (service.model_guard, a push's install), loaded without reading it again."""
    if opened is None:
        opened = open_model(model_path or config.model, trusted_keys, allow_unsigned_models, label, device_key)
    manifest = opened.manifest
    if manifest is not None:
        config = apply_manifest(config, manifest)
        version = version or manifest.version
    model = load_model_file(
        opened.model_file,
        runtime=config.runtime,
        num_threads=config.num_threads or None,
        delegate=config.delegate,
        on_delegate_failure=config.on_delegate_failure,
    )
    own_labels = list(manifest.labels) if manifest is not None and manifest.labels else model.file.labels
    labels = load_labels(config.labels) if config.labels else own_labels
    active = ActiveModel(model, config, labels, version)
    if manifest is not None:
        active.ref = ModelRef(manifest.name, active.ref.sha256, version)
    logger.info("pipeline %s: model %s from %s", config.name, active.ref.name, opened.provenance)
    return active


def load_labels(path: str) -> list[str]:
    try:
        return parse_labels(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabelsError(f"labels file {path} does not exist: fix 'labels' or remove it to use the model's own labels") from None
    except (OSError, UnicodeDecodeError) as err:
        raise LabelsError(f"labels file {path} cannot be read: {err}") from None
