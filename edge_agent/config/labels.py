"""A detection pipeline's per-label keys: `labels` (a labels file, or `[labels.LABEL]` tables with
the file in `labels_file`), the `[labels.LABEL]` filters, and `[thresholds]`, their older spelling
of a per-label minimum score.
"""

from dataclasses import dataclass
from typing import Any

from edge_agent.config.setting import Setting, derived, setting


@dataclass(frozen=True)
class LabelFilterConfig:
    """Per-label filters of a detection pipeline (`[pipelines.NAME.labels.LABEL]`). Two scores, as Frigate
    names them: `min_score` (decode: each frame's detections) and `threshold` (interpret: an object's `new`)."""

    name: str = derived("the label, as the model names it", lambda table, values: table.name)
    min_score: float | None = setting(None, "decode: minimum score of this label's detections in each frame, "
                                            "overriding the pipeline's threshold (Frigate's min_score)",
                                      minimum=0.0, maximum=1.0, default_text="the pipeline's threshold")
    threshold: float | None = setting(None, "interpret: median score an object's first min_frames frames must reach "
                                            "before its `new` event (Frigate's threshold)",
                                      minimum=0.0, maximum=1.0, default_text="min_score, else the pipeline's threshold")
    min_area: float = setting(0.0, "boxes smaller than this share of the frame are not tracked", minimum=0.0, maximum=1.0)


class LabelsKey:
    """`labels`: a labels file (a string, as before) or per-label filter tables (`[labels.LABEL]`);
    with the tables, the file is `labels_file`."""

    type_text = "path or tables"
    allowed_text = "a labels file, or `[pipelines.NAME.labels.LABEL]` tables (then the file is `labels_file`)"
    tables = {"labels.LABEL": LabelFilterConfig}
    table_titles = {"labels.LABEL": "detection: one label's scores and filters (other labels keep the pipeline's; see "
                                    "\"Two scores per label\")"}
    siblings = {"labels_file": (str, Setting("the labels file, when `labels` holds per-label tables", path=True))}

    def read(self, table: Any, name: str) -> str:
        file_type, file_setting = self.siblings["labels_file"]
        labels_file = table.read_value("labels_file", file_setting, file_type, "")
        value = table.data.get(name)
        if isinstance(value, str):
            table.consume(name)
            if labels_file:
                table.error("labels_file", "give the labels file once: `labels = \"FILE\"` or `labels_file = \"FILE\"`")
            return table.resolve(value) if value else ""
        if value is not None and not isinstance(value, dict):
            table.consume(name)
            table.error(name, f"expected a string (a labels file) or [{table.key(name)}.LABEL] tables, got {value!r}")
        return labels_file


class LabelThresholdsKey:
    """`[pipelines.NAME.thresholds]`: label = minimum score per frame; the older spelling of
    `[pipelines.NAME.labels.LABEL] min_score`, kept so configs written for it still work."""

    type_text = "table"
    allowed_text = "label = number from 0.0 to 1.0"
    tables: dict[str, type] = {}
    siblings: dict[str, tuple[type, Setting]] = {}

    def read(self, table: Any, name: str) -> tuple[tuple[str, float], ...]:
        table.consume(name)
        value = table.data.get(name, {})
        if not isinstance(value, dict):
            table.error(name, f"expected a table of label = minimum score, got {value!r}")
            return ()
        thresholds = []
        for label, score in value.items():
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0.0 <= score <= 1.0:
                table.error(f"{name}.{label}", f"expected a number from 0.0 to 1.0, got {score!r}")
            else:
                thresholds.append((label, float(score)))
        return tuple(thresholds)
