"""The representative dataset for full-integer quantisation, prepared exactly as the board prepares frames.

`--calibration` names a folder of images (searched recursively), a .npy file, or a video
clip from the camera (any file OpenCV reads; see `edge_agent.samples` for what each
may hold). At most `limit` samples are used, evenly spread over the sorted set (or through
the clip) so the choice is reproducible. Images and video frames become model inputs
through the board's own Preprocessor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edge_agent.config import PreprocessOptions
from edge_agent.samples import (
    Progress,
    SampleError,
    SampleSet,
    list_images,
    load_array_file,
    read_images,
    read_video_frames,
    samples_from_array,
    spread_indexes,
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
        images = [images[i] for i in spread_indexes(len(images), limit)]
        return SampleSet(str(path), frames=read_images(images, spec, PURPOSE, progress))
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise SampleError(f"{PURPOSE}: {path} is one image; calibration needs many: pass the folder of images")
    if path.suffix.lower() not in (".npy", ".npz"):
        return SampleSet(str(path), frames=read_video_frames(path, spec, PURPOSE, limit, progress))
    arrays = load_array_file(path, PURPOSE)
    if "x" not in arrays:
        raise SampleError(f"{PURPOSE}: {path} has no array 'x' (it has {', '.join(sorted(arrays)) or 'none'})")
    array = arrays["x"]
    samples = samples_from_array(array, spec, options, str(path), PURPOSE)
    samples = samples.subset(spread_indexes(len(samples), limit))
    if progress:
        progress(len(samples), len(samples))
    return samples


def representative_dataset(samples: SampleSet, spec: TensorSpec, options: PreprocessOptions
                           ) -> Callable[[], Iterator[list[np.ndarray]]]:
    """The converter's `representative_dataset`: prepared once, replayed as often as it asks."""
    prepared = list(samples.model_inputs(spec, options))
    return lambda: ([x] for x in prepared)


