"""What an exporter wrote into a .tflite about the model: Ultralytics' metadata.json (class names, input
size, task, stride, keypoint shape, whether NMS is inside), read from the zip appended to the file.

The file is untrusted input: the entry's size is bounded, it is parsed as JSON (or, for exports
older than metadata.json, as a Python literal with ast.literal_eval, which evaluates no code), and
each field is checked on its own. A field that is wrong is dropped and named in `problems`; the
model still loads, with labels and task from the configuration instead.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from typing import Any

METADATA_FILE = "metadata.json"
MAX_METADATA_BYTES = 1 << 20
MAX_NAMES = 100_000
MAX_NAME_CHARS = 256
MAX_IMAGE_SIDE = 100_000
# ast.literal_eval (and the compiler under it) recurses per nesting level: 100,000 brackets crash the
# process with a C stack overflow instead of raising, so deep text is refused before any parser sees it.
MAX_NESTING = 32
ULTRALYTICS_TASKS = ("detect", "segment", "pose", "classify", "obb", "semantic")  # its own words


@dataclass(frozen=True)
class ExportMetadata:
    """The fields the agent uses; `problems` lists fields that were present but unusable."""

    names: tuple[str, ...] = ()
    imgsz: tuple[int, int] | None = None  # (height, width)
    task: str = ""
    stride: int | None = None
    kpt_shape: tuple[int, int] | None = None
    kpt_names: tuple[str, ...] = ()
    end2end: bool | None = None
    version: str = ""
    problems: tuple[str, ...] = ()


def find_export_metadata(attached: dict[str, bytes]) -> ExportMetadata | None:
    """Ultralytics' metadata among the attached files: `metadata.json`, or (older exports) the only entry
    holding a literal dict with `names`; None when there is none."""
    if METADATA_FILE in attached:
        return parse_export_metadata(attached[METADATA_FILE], as_json=True)
    candidates = [name for name in attached if "label" not in name.lower()]
    if len(attached) == 1 and candidates:
        parsed = parse_export_metadata(attached[candidates[0]], as_json=False)
        if parsed.names or parsed.task:
            return parsed
    return None


def parse_export_metadata(data: bytes, as_json: bool) -> ExportMetadata:
    problems: list[str] = []
    raw = _load(data, as_json, problems)
    if not isinstance(raw, dict):
        if raw is not None:
            problems.append(f"{METADATA_FILE} holds a {type(raw).__name__}, not an object")
        return ExportMetadata(problems=tuple(problems))
    names = _names(_literal(raw.get("names")), problems)
    args = _literal(raw.get("args"))
    end2end = _literal(raw.get("end2end"))
    if end2end is None and isinstance(args, dict) and "nms" in args:
        end2end = args.get("nms")
    task = raw.get("task", "")
    if task and task not in ULTRALYTICS_TASKS:
        problems.append(f"task {str(task)[:40]!r} is not one of {', '.join(ULTRALYTICS_TASKS)}")
        task = ""
    kpt_shape = _int_pair(_literal(raw.get("kpt_shape")), "kpt_shape", problems, maximum=1000)
    return ExportMetadata(
        names=names,
        imgsz=_imgsz(_literal(raw.get("imgsz")), problems),
        task=task if isinstance(task, str) else "",
        stride=_positive_int(raw.get("stride"), "stride", problems),
        kpt_shape=kpt_shape,
        kpt_names=_kpt_names(_literal(raw.get("kpt_names")), problems),
        end2end=end2end if isinstance(end2end, bool) else None,
        version=str(raw.get("version", ""))[:40],
        problems=tuple(problems),
    )


def _load(data: bytes, as_json: bool, problems: list[str]) -> Any:
    if len(data) > MAX_METADATA_BYTES:
        problems.append(f"{METADATA_FILE} is {len(data)} bytes, more than the {MAX_METADATA_BYTES} read")
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        problems.append(f"{METADATA_FILE} is not UTF-8 text")
        return None
    if nesting_depth(text) > MAX_NESTING:
        problems.append(f"{METADATA_FILE} nests more than {MAX_NESTING} levels deep")
        return None
    try:
        return json.loads(text) if as_json else ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:
        problems.append(f"{METADATA_FILE} cannot be parsed ({type(err).__name__})")
        return None


def nesting_depth(text: str) -> int:
    """The deepest bracket nesting, counting brackets inside strings too (so never less than the real depth)."""
    depth = deepest = 0
    for char in text:
        if char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}":
            depth = max(0, depth - 1)
    return deepest


def _literal(value: Any) -> Any:
    """Some exporters store fields as Python-literal strings ("[640, 640]", "{0: 'person'}")."""
    if isinstance(value, str) and value[:1] in "[{(" and len(value) <= MAX_METADATA_BYTES and nesting_depth(value) <= MAX_NESTING:
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return value
    return value


def _names(value: Any, problems: list[str]) -> tuple[str, ...]:
    """`names` as a list in class-id order: {0: "person", 1: ...} (keys may be strings) or ["person", ...]."""
    if value is None:
        return ()
    if isinstance(value, list):
        entries = dict(enumerate(value))
    elif isinstance(value, dict):
        entries = {}
        for key, name in value.items():
            try:
                entries[int(key)] = name
            except (TypeError, ValueError):
                problems.append(f"names: key {str(key)[:20]!r} is not a class id")
                return ()
    else:
        problems.append("names: expected a mapping of class ids to names")
        return ()
    if not entries:
        return ()
    if len(entries) > MAX_NAMES or min(entries) < 0 or max(entries) >= MAX_NAMES:
        problems.append(f"names: class ids must lie in 0..{MAX_NAMES - 1}")
        return ()
    if not all(isinstance(name, str) for name in entries.values()):
        problems.append("names: every name must be a string")
        return ()
    labels = [str(i) for i in range(max(entries) + 1)]
    for index, name in entries.items():
        labels[index] = " ".join(name.split())[:MAX_NAME_CHARS] or str(index)
    return tuple(labels)


def _imgsz(value: Any, problems: list[str]) -> tuple[int, int] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    return _int_pair(value, "imgsz", problems, maximum=MAX_IMAGE_SIDE)


def _int_pair(value: Any, name: str, problems: list[str], maximum: int) -> tuple[int, int] | None:
    if value is None:
        return None
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= maximum for v in value)):
        return int(value[0]), int(value[1])
    problems.append(f"{name}: expected two whole numbers from 1 to {maximum}")
    return None


def _positive_int(value: Any, name: str, problems: list[str]) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        number = 0
    if isinstance(value, bool) or not 0 < number <= 1024:
        problems.append(f"{name}: expected a whole number from 1 to 1024")
        return None
    return number


def _kpt_names(value: Any, problems: list[str]) -> tuple[str, ...]:
    """Keypoint names: a list, or {class id: list} as Ultralytics datasets give them (the first class's)."""
    if isinstance(value, dict) and value:
        value = next(iter(value.values()))
    if value is None:
        return ()
    if isinstance(value, (list, tuple)) and len(value) <= 1000 and all(isinstance(v, str) for v in value):
        return tuple(v[:MAX_NAME_CHARS] for v in value)
    problems.append("kpt_names: expected a list of names")
    return ()
