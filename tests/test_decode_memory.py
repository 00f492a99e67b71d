"""Decoding allocates per frame only what it returns and its bounded temporaries: nothing grows across
frames (tracemalloc over hundreds of decodes), for each family. Speed is `edge-agent bench`'s decode_ms."""

from __future__ import annotations

import gc
import tracemalloc

import cv2
import pytest
from skimage import data

from decode_support import RED, active_model, solid_frame

FRAMES = 400


@pytest.mark.parametrize("name, runtime", [
    ("yolov8_float", "auto"), ("yolov8_nchw_int8", "auto"), ("yolo_end2end", "auto"), ("face_detection_short_range", "auto"),
    ("yolov8_seg_float", "auto"), ("yolov8_seg_nchw_int8", "auto"),
    ("yolov8_pose_layout", "auto"), ("movenet_single_layout", "auto"), ("segmentation_scores", "auto"),
    ("selfie_segmentation", "litert"),
])
def test_decoding_many_frames_does_not_grow_memory(name, runtime):
    active = active_model(name, runtime=runtime)
    frame = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR) if "face" in name or "selfie" in name else solid_frame(120, 160, RED)
    buffer = active.acquire_buffer()
    geometry = active.preprocessor.prepare(frame, buffer)
    outputs = active.model.run(buffer)
    first = active.decode(outputs, geometry)
    assert first.detections or first.poses or first.segments, "the frame must give the decoder real work"
    for _ in range(50):
        active.decode(outputs, geometry)
    gc.collect()
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        for _ in range(FRAMES):
            result = active.decode(outputs, geometry)
        del result
        gc.collect()
        end, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert end - start < 16 * 1024, f"{name}: {end - start} bytes kept after {FRAMES} decodes"
    assert peak - start < 2 << 20, f"{name}: a decode needed {peak - start} bytes at once"
