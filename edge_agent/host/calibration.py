"""The representative dataset for full-integer quantisation, prepared exactly as the board prepares frames.

`--calibration` names a folder of images (searched recursively) or a .npy file (see
`edge_agent.host.samples` for what each may hold). At most `limit` samples are used,
evenly spread over the sorted set so the choice is reproducible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edge_agent.config import PreprocessOptions
from edge_agent.host.samples import (
    Progress,
    SampleError,
    SampleSet,
    list_images,
    load_array_file,
    read_images,
    samples_from_array,
)
from edge_agent.runtime.model import TensorSpec
from edge_agent.sources.spec import IMAGE_SUFFIXES

PURPOSE = "--calibration"


def load_calibration(path: Path, spec: TensorSpec, options: PreprocessOptions, limit: int,
                     progress: Progress | None = None) -> SampleSet:
    """Read and check the calibration data; SampleError names what does not fit."""
    if limit < 1:
        raise SampleError(f"--calibration-limit must be at least 1, got {limit}")
    if not path.exists():
        raise SampleError(f"{PURPOSE}: {path} does not exist")
    if path.is_dir():
        images = list_images(path)
        if not images:
            raise SampleError(
                f"{PURPOSE}: {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); an empty calibration "
                "set cannot calibrate: add a few hundred images like the camera's"
            )
        images = [images[i] for i in _spread(len(images), limit)]
        return SampleSet(str(path), frames=read_images(images, spec, PURPOSE, progress))
    if path.suffix.lower() != ".npy":
        raise SampleError(f"{PURPOSE}: {path} is neither a folder of images nor a .npy file")
    array = load_array_file(path, PURPOSE)["x"]
    samples = samples_from_array(array, spec, options, str(path), PURPOSE)
    samples = samples.subset(_spread(len(samples), limit))
    if progress:
        progress(len(samples), len(samples))
    return samples


def representative_dataset(samples: SampleSet, spec: TensorSpec, options: PreprocessOptions
                           ) -> Callable[[], Iterator[list[np.ndarray]]]:
    """The converter's `representative_dataset`: prepared once, replayed as often as it asks."""
    prepared = list(samples.model_inputs(spec, options))
    return lambda: ([x] for x in prepared)


def _spread(count: int, limit: int) -> np.ndarray:
    if count <= limit:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, limit).round().astype(int))
