"""Write tests/model_files/box_finder.tflite: a detector whose outputs a test controls exactly.

It finds one box per colour channel: the bounding box of the pixels brighter than half in the red,
green and blue planes of its [1, 64, 64, 3] float input (RGB, 0 to 1), as classes 0, 1 and 2, each
with a score of 0.99 x the brightest pixel of its box (0 when the plane has none). Its four outputs
are laid out as TFLite_Detection_PostProcess's (boxes [1, 3, 4] as ymin, xmin, ymax, xmax in 0-1,
classes [1, 3], scores [1, 3], count [1]), so the agent decodes it as an SSD detector. A video of
coloured squares on black is then a scene with known objects: a red square is "person", a green one
"car" (box_finder.labels.txt), at the place and score the test drew, frame after frame.

Run with the test venv (TensorFlow comes with the `host` extra):
    .venv/bin/python models/make_box_finder.py [--out tests/model_files]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from edge_agent.atomic_file import write_file_atomically  # noqa: E402

SIZE = 64
LABELS = ["person", "car", "dog"]


def build() -> bytes:
    import tensorflow as tf

    index = tf.constant(np.arange(SIZE, dtype=np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32, name="image")])
    def find_boxes(image):
        planes = tf.transpose(image[0], [2, 0, 1])  # [3, H, W]
        mask = tf.cast(planes > 0.5, tf.float32)
        rows = tf.reduce_max(mask, axis=2)  # [3, H]: any bright pixel in the row
        cols = tf.reduce_max(mask, axis=1)  # [3, W]
        found = tf.reduce_max(rows, axis=1)  # [3]: 1 where the plane has a box
        big = float(SIZE)
        ymin = tf.reduce_min(rows * index + (1.0 - rows) * big, axis=1) / SIZE
        ymax = tf.reduce_max(rows * (index + 1.0), axis=1) / SIZE
        xmin = tf.reduce_min(cols * index + (1.0 - cols) * big, axis=1) / SIZE
        xmax = tf.reduce_max(cols * (index + 1.0), axis=1) / SIZE
        boxes = tf.stack([ymin * found, xmin * found, ymax * found, xmax * found], axis=1)[None]  # [1, 3, 4]
        scores = (0.99 * tf.reduce_max(tf.reshape(planes * mask, [3, -1]), axis=1))[None]  # [1, 3]
        classes = tf.constant([[0.0, 1.0, 2.0]])
        count = tf.constant([3.0])
        # the TF1 export order (boxes, classes, scores, count): what the agent assumes when the
        # values alone cannot tell classes from scores (a frame without any object)
        return {"a_boxes": boxes, "b_classes": classes, "c_scores": scores, "d_count": count}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([find_boxes.get_concrete_function()], find_boxes)
    return converter.convert()


def check(model: bytes) -> None:
    """Draw a red and a green square and read them back (ai_edge_litert)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    interpreter.allocate_tensors()
    image = np.zeros((1, SIZE, SIZE, 3), np.float32)
    image[0, 8:24, 16:40, 0] = 0.9  # red: rows 8-23, columns 16-39
    image[0, 40:56, 4:12, 1] = 0.7  # green
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
    interpreter.invoke()
    boxes, classes, scores, count = (interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details())
    assert np.allclose(boxes[0, 0], [8 / 64, 16 / 64, 24 / 64, 40 / 64]), boxes
    assert np.allclose(boxes[0, 1], [40 / 64, 4 / 64, 56 / 64, 12 / 64]), boxes
    assert np.allclose(scores[0], [0.891, 0.693, 0.0]), scores
    assert classes.tolist() == [[0, 1, 2]] and count.tolist() == [3]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "model_files")
    args = parser.parse_args()
    model = build()
    check(model)
    write_file_atomically(args.out / "box_finder.tflite", model)
    write_file_atomically(args.out / "box_finder.labels.txt", ("\n".join(LABELS) + "\n").encode())
    print(f"{args.out / 'box_finder.tflite'}: {len(model)} bytes, checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
