"""Generated video for benchmarks: smooth moving shapes that cost a realistic amount to decode."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def write_benchmark_video(path: Path, width: int = 640, height: int = 480, frames: int = 150, fps: float = 30.0) -> Path:
    """An MJPG .avi of moving gradients and shapes (as a USB camera's MJPG stream would be)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), (0, 0), 3)
    try:
        for i in range(frames):
            phase = i / frames * 2 * np.pi
            base = (127 + 100 * np.sin(xs / 40 + phase) * np.cos(ys / 55 - phase)).astype(np.uint8)
            frame = cv2.addWeighted(cv2.merge([base, np.roll(base, i, axis=1), np.roll(base, -i, axis=0)]), 0.7, texture, 0.3, 0)
            center = (int(width / 2 + width / 3 * np.cos(phase)), int(height / 2 + height / 3 * np.sin(phase)))
            cv2.circle(frame, center, height // 8, (40, 200, 240), -1)
            cv2.rectangle(frame, (width // 10, height // 10), (width // 10 + i % (width // 2), height // 4), (200, 60, 60), -1)
            writer.write(frame)
    finally:
        writer.release()
    return path
