"""`python -m edge_agent.interpret.benchmark`: what the interpret stage costs per frame.

Feeds the Interpreter synthetic frames of N moving objects (and two zones) and prints the
CPU microseconds per frame (tracking, events and counts, without and with two zones). Numbers, not a test.
"""

from __future__ import annotations

import argparse
import time

from edge_agent.interpret.stage import Interpreter
from edge_agent.interpret.zones import Zone
from edge_agent.records import Detection

ZONES = (Zone("left", ((0, 0), (0.5, 0), (0.5, 1), (0, 1))), Zone("door", ((0.3, 0.6), (0.7, 0.6), (0.7, 1), (0.3, 1))))


def frames(objects: int, count: int) -> list[list[Detection]]:
    """`objects` boxes drifting right, each its own lane; the same list every run."""
    result = []
    for i in range(count):
        x = (i % 200) / 400.0
        result.append([Detection(k % 3, ("person", "car", "dog")[k % 3], 0.8, (k / (objects + 1), x, k / (objects + 1) + 0.08, x + 0.1))
                       for k in range(objects)])
    return result


def per_frame_us(objects: int, zones: tuple[Zone, ...], count: int) -> float:
    interp = Interpreter("detection", model_labels=["person", "car", "dog"], zones=zones, update_interval_s=1.0)
    interp.start()
    feed = frames(objects, count)
    started = time.process_time()  # CPU time of this process: what the stage costs, less the machine's other load
    for i, detections in enumerate(feed):
        interp.step(1000.0 + i / 30.0, detections=detections)
    return (time.process_time() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3000)
    args = parser.parse_args()
    print(f"{'objects':>7}  {'no zones':>10}  {'2 zones':>10}   (CPU µs per frame, {args.frames} frames at 30 fps)")
    for objects in (0, 1, 5, 10, 20):
        print(f"{objects:>7}  {per_frame_us(objects, (), args.frames):>10.1f}  {per_frame_us(objects, ZONES, args.frames):>10.1f}")


if __name__ == "__main__":
    main()
