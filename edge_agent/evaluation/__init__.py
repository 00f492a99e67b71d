"""`edge-agent evaluate`: a model's accuracy and latency on labelled data, measured the board's way.

Every image goes through the agent's own preprocessing, runtime and decoder (an
`ActiveModel`, as a pipeline builds it), so the numbers are what the board will do.
Board-side: no TensorFlow. Detection metrics use pycocotools (the `eval` extra).

  detection_data.py   YOLO-format folders and COCO JSON -> images with ground-truth boxes
  classification.py   top-1 / top-5 accuracy
  detection.py        COCO mAP@0.5 and mAP@0.5:0.95 through pycocotools
  timing.py           per-image latency: preprocess, inference, decode
  command.py          the `evaluate` subcommand
"""
