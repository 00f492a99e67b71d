"""Read what a `.tflite` file says about itself without loading it into a runtime.

A `.tflite` file is a FlatBuffer (schema: tensorflow/lite/schema/schema.fbs). The whole file
is verified first (runtime/tflite_verify.py: a damaged model can crash a runtime), then we read
only the few fields we need (operator codes, operators, metadata names) with a small
bounds-checked reader, so that a truncated, damaged or foreign file gives a clear error and an
Edge TPU model can be recognised before an interpreter refuses it. Associated files
(labels) are attached the way the TFLite metadata populator does it: as a zip archive
appended after the FlatBuffer.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.runtime.builtin_ops import BUILTIN_OPERATOR_NAMES
from edge_agent.runtime.tflite_verify import ModelInvalid, verify_model
from edge_agent.errors import EdgeAgentError, InputError
from edge_agent.runtime.export_metadata import ExportMetadata, find_export_metadata

EDGETPU_CUSTOM_OP = "edgetpu-custom-op"
DETECTION_POSTPROCESS_OP = "TFLite_Detection_PostProcess"
# What `edge-agent convert` attaches about itself (edge_agent.host.metadata writes it).
CONVERSION_INFO_FILE = "edge_agent_conversion.json"
_CUSTOM_CODE = 32
_INDEXED_LABEL = re.compile(r"^(\d+)(?:\s*:\s*|\s+)(\S.*)$")
_MAX_LABEL_INDEX = 100_000  # larger "indexes" are part of the label text, not positions
# the zip appended to a model is untrusted: read a bounded number of entries and bytes
_MAX_ATTACHED_FILES = 64
_MAX_ATTACHED_FILE_BYTES = 16 << 20
_MAX_ATTACHED_TOTAL_BYTES = 32 << 20


class ModelFileError(InputError, ValueError):
    """The file is missing, unreadable, not TFLite, or damaged."""


@dataclass(frozen=True)
class ModelFile:
    """Facts read from a .tflite file: bytes, hash, operators, attached labels."""

    path: Path
    content: bytes
    sha256: str
    operator_counts: dict[str, int]
    metadata_names: tuple[str, ...]
    detection_output_roles: dict[int, str]  # tensor index -> boxes/classes/scores/count of the SSD op
    attached_files: dict[str, bytes] = field(repr=False)

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def custom_ops(self) -> list[str]:
        return [op for op in self.operator_counts if op not in BUILTIN_OPERATOR_NAMES.values()]

    @property
    def needs_edgetpu(self) -> bool:
        return EDGETPU_CUSTOM_OP in self.operator_counts

    @property
    def conversion_info(self) -> dict:
        """What `edge-agent convert` recorded in the model, or {} for models made elsewhere."""
        data = self.attached_files.get(CONVERSION_INFO_FILE)
        if not data:
            return {}
        try:
            info = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return {}
        return info if isinstance(info, dict) else {}

    @property
    def labels(self) -> list[str] | None:
        """Labels from an attached file whose name mentions labels, else the class names of the
        exporter's metadata (Ultralytics), if any."""
        for name in sorted(self.attached_files):
            if "label" in name.lower():
                return parse_labels(self.attached_files[name].decode("utf-8", "replace"))
        metadata = self.export_metadata
        if metadata is not None and metadata.names:
            return list(metadata.names)
        return None

    @property
    def export_metadata(self) -> ExportMetadata | None:
        """Ultralytics' metadata.json (names, imgsz, task, ...) when the file carries it."""
        return find_export_metadata(self.attached_files)


def parse_labels(text: str) -> list[str]:
    """One label per line, or `0 person` / `0: person` / `0<TAB>person` lines placed at their index.

    When every line has an index, the index decides the position (as pycoral's read_label_file
    does): Coral's COCO label files skip unused ids, and reading them in line order would shift
    every later label. Ids a file skips are labelled with their number.
    """
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        match = _INDEXED_LABEL.match(line)
        entries.append((int(match[1]), match[2].strip()) if match else (None, line))
    indexes = [index for index, _ in entries]
    if not entries or None in indexes or max(indexes) > _MAX_LABEL_INDEX:
        return [label for _, label in entries]
    labels = [str(i) for i in range(max(indexes) + 1)]
    for index, label in entries:
        labels[index] = label
    return labels


def read_model_file(path: str | Path) -> ModelFile:
    """Read and check a .tflite file; raise ModelFileError naming the problem and the fix."""
    path = Path(path)
    try:
        content = path.read_bytes()
    except FileNotFoundError as err:
        raise ModelFileError(f"model file {path} does not exist: check the path in 'model'") from err
    except IsADirectoryError as err:
        raise ModelFileError(f"model path {path} is a directory: name the .tflite file itself") from err
    except OSError as err:
        raise ModelFileError(f"model file {path} cannot be read ({err.strerror}): check its permissions") from err
    return model_file_from_bytes(path, content)


def model_file_from_bytes(path: str | Path, content: bytes) -> ModelFile:
    """Check model bytes already in memory (e.g. taken from a verified bundle); `path` names them in errors."""
    path = Path(path)
    try:
        operator_counts, metadata_names, detection_roles = _read_flatbuffer(content)
    except _Malformed as err:
        raise ModelFileError(
            f"{path} is not a valid TFLite model ({err}); it may be truncated, damaged or not a .tflite file: "
            "copy it again or re-export it"
        ) from None
    return ModelFile(
        path=path,
        content=content,
        sha256=hashlib.sha256(content).hexdigest(),
        operator_counts=operator_counts,
        metadata_names=metadata_names,
        detection_output_roles=detection_roles,
        attached_files=_read_attached_files(content),
    )


class _Malformed(EdgeAgentError):
    pass


class _FlatBuffer:
    """Just enough of the FlatBuffers wire format to walk tables, vectors and strings."""

    def __init__(self, data: bytes):
        self.data = data

    def _unpack(self, fmt: str, pos: int) -> int:
        size = struct.calcsize(fmt)
        if pos < 0 or pos + size > len(self.data):
            raise _Malformed(f"offset {pos} beyond the end of the {len(self.data)}-byte file")
        return struct.unpack_from(fmt, self.data, pos)[0]

    def root(self) -> int:
        return self._unpack("<I", 0)

    def _field_pos(self, table: int, index: int) -> int | None:
        vtable = table - self._unpack("<i", table)
        vtable_size = self._unpack("<H", vtable)
        slot = 4 + 2 * index
        if slot >= vtable_size:
            return None
        offset = self._unpack("<H", vtable + slot)
        return table + offset if offset else None

    def scalar(self, table: int, index: int, fmt: str, default: int = 0) -> int:
        pos = self._field_pos(table, index)
        return default if pos is None else self._unpack(fmt, pos)

    def _indirect(self, pos: int) -> int:
        return pos + self._unpack("<I", pos)

    def table(self, table: int, index: int) -> int | None:
        pos = self._field_pos(table, index)
        return None if pos is None else self._indirect(pos)

    def string(self, table: int, index: int) -> str | None:
        pos = self._field_pos(table, index)
        if pos is None:
            return None
        start = self._indirect(pos)
        length = self._unpack("<I", start)
        if start + 4 + length > len(self.data):
            raise _Malformed("string runs past the end of the file")
        return self.data[start + 4 : start + 4 + length].decode("utf-8", "replace")

    def ints(self, table: int, index: int, size_only: bool = False) -> list[int]:
        """A vector of int32 (or, with size_only, just a bounds check of a byte vector)."""
        pos = self._field_pos(table, index)
        if pos is None:
            return []
        start = self._indirect(pos)
        count = self._unpack("<I", start)
        width = 1 if size_only else 4
        if start + 4 + width * count > len(self.data):
            raise _Malformed("vector runs past the end of the file")
        return [] if size_only else list(struct.unpack_from(f"<{count}i", self.data, start + 4))

    def tables(self, table: int, index: int) -> list[int]:
        pos = self._field_pos(table, index)
        if pos is None:
            return []
        start = self._indirect(pos)
        count = self._unpack("<I", start)
        if start + 4 + 4 * count > len(self.data):
            raise _Malformed("vector runs past the end of the file")
        return [self._indirect(start + 4 + 4 * i) for i in range(count)]

    def vector(self, table: int, index: int, fmt: str) -> list:
        """A vector of scalars of struct format `fmt` (e.g. "<f", "<q"); [] when the field is absent."""
        pos = self._field_pos(table, index)
        if pos is None:
            return []
        start = self._indirect(pos)
        count = self._unpack("<I", start)
        width = struct.calcsize(fmt)
        if start + 4 + width * count > len(self.data):
            raise _Malformed("vector runs past the end of the file")
        return list(struct.unpack_from(f"{fmt[0]}{count}{fmt[1:]}", self.data, start + 4))


_DETECTION_ROLES = ("boxes", "classes", "scores", "count")  # the op's own output order


def _read_flatbuffer(content: bytes) -> tuple[dict[str, int], tuple[str, ...], dict[int, str]]:
    try:
        verify_model(content)
    except ModelInvalid as err:
        raise _Malformed(str(err)) from None
    fb = _FlatBuffer(content)
    model = fb.root()
    op_names = []
    for code in fb.tables(model, 1):  # Model.operator_codes
        builtin = max(fb.scalar(code, 0, "<b"), fb.scalar(code, 3, "<i"))
        if builtin == _CUSTOM_CODE:
            op_names.append(fb.string(code, 1) or "CUSTOM")
        else:
            op_names.append(BUILTIN_OPERATOR_NAMES.get(builtin, f"BUILTIN_{builtin}"))
    counts: Counter[str] = Counter()
    subgraphs = fb.tables(model, 2)
    detection_roles: dict[int, str] = {}
    for number, subgraph in enumerate(subgraphs):
        for operator in fb.tables(subgraph, 3):
            index = fb.scalar(operator, 0, "<I")
            counts[op_names[index]] += 1
            if number == 0 and op_names[index] == DETECTION_POSTPROCESS_OP:
                detection_roles = dict(zip(fb.ints(operator, 2), _DETECTION_ROLES))
    metadata = tuple(fb.string(m, 0) or "" for m in fb.tables(model, 6))
    return dict(counts.most_common()), metadata, detection_roles


def _read_attached_files(content: bytes) -> dict[str, bytes]:
    """The files of the zip appended to the model (labels, metadata), within bounds: a zip that lies
    about sizes, nests, or is encrypted or damaged gives what could be read within the bounds, or nothing."""
    files: dict[str, bytes] = {}
    total = 0
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            for info in archive.infolist()[:_MAX_ATTACHED_FILES]:
                if info.is_dir() or info.file_size > _MAX_ATTACHED_FILE_BYTES or total + info.file_size > _MAX_ATTACHED_TOTAL_BYTES:
                    continue
                # zipfile stops reading at the declared size and checks the CRC: a bomb cannot grow past it
                files[info.filename] = archive.read(info)
                total += info.file_size
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError, NotImplementedError, zlib.error):
        return files
    return files
