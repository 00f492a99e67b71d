"""The interpret stage: what a pipeline's decoded frames mean over time.

  decode → interpret → outputs

Per pipeline, on the output side (never on the inference thread), plain Python and numpy:

  filters.py      which detections are tracked (`track`, per-label threshold and min_area)
  tracker.py      an IoU tracker: a track_id per object across frames
  zones.py        polygons in frame coordinates; an object is in a zone when its box's bottom centre is
  events.py       new / update / end per tracked object, with the min_frames median-score filter
  counts.py       objects per label, in the frame and per zone, reported only when they change
  label_state.py  classification: the stable top label and its `change` events
  policy.py       when a prediction is published (every_frame, on_change, interval, off)
  stage.py        the Interpreter that runs them for one pipeline and says what to publish

Time enters only here: every call takes the frame's timestamp, so a list of decoded frames with
timestamps is all a test needs (no broker, no camera). `python -m edge_agent.interpret.benchmark`
prints what it costs per frame.
"""

from edge_agent.interpret.stage import Interpretation, Interpreter, Message, interpreter_for

__all__ = ["Interpretation", "Interpreter", "Message", "interpreter_for"]
