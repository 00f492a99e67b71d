"""Files attached to a .tflite: labels, and what the converter knew (preprocessing, task, validation).

They are stored the way the TFLite metadata populator stores associated files: a zip
archive appended after the FlatBuffer. Interpreters ignore the trailing bytes;
`edge-agent inspect` and the agent find `labels.txt` through
`edge_agent.runtime.tflite_file` (any attached file whose name mentions "label"), and
`edge-agent bundle create` reads `edge_agent_conversion.json` to fill in the manifest.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

from edge_agent.runtime.tflite_file import CONVERSION_INFO_FILE, ModelFile

LABELS_FILE = "labels.txt"
_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def attach_files(model: bytes, files: dict[str, bytes]) -> bytes:
    """`model` with `files` appended as a zip archive (stored, fixed timestamps: reproducible)."""
    if not files:
        return model
    buffer = io.BytesIO(model)
    buffer.seek(0, io.SEEK_END)
    with zipfile.ZipFile(buffer, "a", compression=zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=_FIXED_ZIP_TIME), data)
    return buffer.getvalue()


def labels_file_bytes(labels: list[str]) -> bytes:
    return ("\n".join(labels) + "\n").encode("utf-8")


def conversion_info_bytes(info: dict[str, Any]) -> bytes:
    return (json.dumps(info, indent=2, sort_keys=True) + "\n").encode("utf-8")


def read_conversion_info(model_file: ModelFile) -> dict[str, Any]:
    """What `edge-agent convert` recorded in the model, or {} for models made elsewhere."""
    return model_file.conversion_info
