"""Detection datasets: a YOLO-format folder or COCO JSON annotations, as images with ground-truth boxes.

YOLO (Ultralytics' layout): `DATA/images/**/NAME.jpg` with `DATA/labels/**/NAME.txt` beside it
(same relative path), one `class cx cy w h` line per object, normalised to 0-1 of the image;
an empty label file is an image without objects. Class ids are the model's class ids.

COCO: a JSON file with `images` (id, file_name, width, height), `annotations` (image_id,
category_id, bbox [x, y, w, h] in pixels, iscrowd) and `categories` (id, name). Images are
found under `images_dir` (default: the JSON's folder, then its `images/` sub-folder).
Categories are matched to the model's labels by name when every name is one of them,
otherwise a category id is taken as the model's class id.

A file with a problem (no label file, a malformed line, a box outside the image, an unknown
class) is left out and named in `problems`; the rest is evaluated. No usable image at all is
a DatasetError.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from edge_agent.errors import EdgeAgentError, InputError
from edge_agent.sources.spec import IMAGE_SUFFIXES

# Label tools round coordinates; a box may overshoot the image edge by this much (fraction of
# the image) before it counts as outside.
EDGE_TOLERANCE = 1e-3


class DatasetError(InputError, ValueError):
    """The dataset cannot be evaluated at all (missing, empty, unreadable annotations)."""


@dataclass(frozen=True)
class GroundTruth:
    class_id: int
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 normalised to the image (0-1)
    crowd: bool = False


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    objects: tuple[GroundTruth, ...]
    size: tuple[int, int] | None = None  # (width, height) the annotations were made on, when known


@dataclass(frozen=True)
class DetectionDataset:
    source: str
    format: str  # "yolo" or "coco"
    images: tuple[LabelledImage, ...]
    problems: tuple[str, ...]  # one line per left-out file: what was wrong
    class_mapping: str  # how dataset classes became model class ids


def looks_like_detection_data(path: Path) -> bool:
    """A COCO .json file or a folder with images/ and labels/ (what `--task auto` goes by)."""
    return (path.is_file() and path.suffix.lower() == ".json") or (
        path.is_dir() and (path / "images").is_dir() and (path / "labels").is_dir()
    )


def load_detection_dataset(path: Path, labels: list[str] | None, num_classes: int | None,
                           images_dir: Path | None = None) -> DetectionDataset:
    """Read a YOLO folder or COCO JSON (see the module docstring); `num_classes` bounds the class ids."""
    if not path.exists():
        raise DatasetError(f"{path} does not exist: give a YOLO dataset folder (images/, labels/) or a COCO .json file")
    if path.is_file() and path.suffix.lower() == ".json":
        dataset = _load_coco(path, labels, num_classes, images_dir)
    elif path.is_dir():
        dataset = _load_yolo(path, num_classes)
    else:
        raise DatasetError(f"{path} is neither a YOLO dataset folder (images/, labels/) nor a COCO .json file")
    if not dataset.images:
        found = f"; every file had a problem:\n{list_problems(dataset.problems)}" if dataset.problems else ""
        raise DatasetError(f"{path} holds no images to evaluate{found}")
    return dataset


def list_problems(problems: list[str] | tuple[str, ...], limit: int = 20) -> str:
    """Indented lines for an error message; a long list is cut after `limit`."""
    lines = [f"  {problem}" for problem in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- YOLO

def _load_yolo(root: Path, num_classes: int | None) -> DetectionDataset:
    images_root, labels_root = root / "images", root / "labels"
    if not images_root.is_dir():
        raise DatasetError(
            f"{root} has no images/ folder: a YOLO dataset is images/NAME.jpg with labels/NAME.txt "
            "(one 'class cx cy w h' line per object)"
        )
    image_paths = sorted(p for p in images_root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    images, problems = [], []
    for image_path in image_paths:
        label_path = (labels_root / image_path.relative_to(images_root)).with_suffix(".txt")
        if not label_path.is_file():
            problems.append(f"{image_path}: no label file {label_path} (an image without objects needs an empty one)")
            continue
        try:
            objects = _read_yolo_labels(label_path, num_classes)
        except _FileProblem as problem:
            problems.append(f"{label_path}: {problem}")
            continue
        images.append(LabelledImage(image_path, objects))
    if labels_root.is_dir():
        image_stems = {p.relative_to(images_root).with_suffix("") for p in image_paths}
        for label_path in sorted(labels_root.rglob("*.txt")):
            if label_path.relative_to(labels_root).with_suffix("") not in image_stems:
                problems.append(f"{label_path}: no image for this label file")
    return DetectionDataset(str(root), "yolo", tuple(images), tuple(problems), "class ids as written")


class _FileProblem(EdgeAgentError):
    """One file's problem: the file is left out and the problem listed."""


def _read_yolo_labels(path: Path, num_classes: int | None) -> tuple[GroundTruth, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise _FileProblem(f"cannot be read ({err})") from None
    objects = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise _FileProblem(f"line {number}: expected 'class cx cy w h' (5 fields), got {len(fields)}")
        try:
            class_id = int(fields[0])
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError:
            raise _FileProblem(f"line {number}: {line.strip()!r} is not an integer class and 4 numbers") from None
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        _check_class(class_id, num_classes, f"line {number}")
        _check_box(box, f"line {number} ({line.strip()})", "cx, cy, w, h are fractions 0-1 of the image")
        objects.append(GroundTruth(class_id, box))
    return tuple(objects)


def _check_class(class_id: int, num_classes: int | None, where: str) -> None:
    if class_id < 0 or (num_classes is not None and class_id >= num_classes):
        bound = f" (the model has classes 0 to {num_classes - 1})" if num_classes is not None else ""
        raise _FileProblem(f"{where}: class {class_id} is not a class of the model{bound}")


def _check_box(box: tuple[float, float, float, float], where: str, units: str) -> None:
    """`box` is normalised; `where` shows it as the file wrote it, `units` says what its numbers are."""
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box) or x2 <= x1 or y2 <= y1:
        raise _FileProblem(f"{where}: the box has no area or is not finite")
    if x1 < -EDGE_TOLERANCE or y1 < -EDGE_TOLERANCE or x2 > 1 + EDGE_TOLERANCE or y2 > 1 + EDGE_TOLERANCE:
        raise _FileProblem(f"{where}: the box lies outside the image ({units}): fix or remove it")


# ---------------------------------------------------------------------------- COCO

def _load_coco(path: Path, labels: list[str] | None, num_classes: int | None,
               images_dir: Path | None) -> DetectionDataset:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path} cannot be read as COCO JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{path} is not COCO annotations: it needs an 'images' list (and 'annotations', 'categories')")
    categories = [c for c in data.get("categories") or [] if isinstance(c, dict)]
    to_class, mapping = _category_mapping(categories, labels)
    folders = [images_dir] if images_dir else [path.parent, path.parent / "images"]

    problems: list[str] = []
    entries: dict[object, dict] = {}
    for entry in data["images"]:
        if not (isinstance(entry, dict) and isinstance(entry.get("id"), (int, str))
                and isinstance(entry.get("file_name"), str)):
            problems.append(f"{path}: an image entry without 'id' and 'file_name': {str(entry)[:80]}")
            continue
        width, height = entry.get("width"), entry.get("height")
        sized = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (width, height))
        problem = None if sized else "the image entry needs a positive 'width' and 'height' in pixels"
        entries[entry["id"]] = {"entry": entry, "objects": [], "problem": problem}
    for number, annotation in enumerate(data.get("annotations") or []):
        image_id = annotation.get("image_id") if isinstance(annotation, dict) else None
        image = entries.get(image_id) if isinstance(image_id, (int, str)) else None
        if image is None:
            problems.append(f"{path}: annotation {number} refers to no listed image")
            continue
        if image["problem"] is None:
            try:
                image["objects"].append(_coco_object(annotation, image["entry"], to_class, num_classes))
            except _FileProblem as problem:
                image["problem"] = f"annotation {annotation.get('id', number)}: {problem}"

    images = []
    for image in entries.values():
        entry = image["entry"]
        name = f"{path}: image {entry['id']} ({entry['file_name']})"
        if image["problem"]:
            problems.append(f"{name}: {image['problem']}")
            continue
        found = next((folder / entry["file_name"] for folder in folders if (folder / entry["file_name"]).is_file()), None)
        if found is None:
            problems.append(f"{name}: not found in {' or '.join(str(f) for f in folders)} (use --images DIR)")
            continue
        images.append(LabelledImage(found, tuple(image["objects"]), (int(entry["width"]), int(entry["height"]))))
    return DetectionDataset(str(path), "coco", tuple(images), tuple(problems), mapping)


def _category_mapping(categories: list[dict], labels: list[str] | None) -> tuple[dict, str]:
    names = {c.get("id"): str(c.get("name", "")) for c in categories}
    if labels and names and all(name in labels for name in names.values()):
        return {cid: labels.index(name) for cid, name in names.items()}, "categories matched to the model's labels by name"
    return {}, "category ids taken as the model's class ids"


def _coco_object(annotation: dict, entry: dict, to_class: dict, num_classes: int | None) -> GroundTruth:
    bbox = annotation.get("bbox")
    width, height = entry["width"], entry["height"]
    if not (isinstance(bbox, list) and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
        raise _FileProblem(f"'bbox' must be [x, y, width, height] in pixels, got {bbox!r}")
    category = annotation.get("category_id")
    class_id = to_class.get(category, category) if to_class else category
    if not isinstance(class_id, int) or isinstance(class_id, bool):
        raise _FileProblem(f"category {category!r} is not a category of the file")
    _check_class(class_id, num_classes, f"category {category}")
    x, y, w, h = (float(v) for v in bbox)
    box = (x / width, y / height, (x + w) / width, (y + h) / height)
    _check_box(box, f"bbox {bbox}", f"x, y, width, height in pixels of the {width}x{height} image")
    return GroundTruth(class_id, box, bool(annotation.get("iscrowd", 0)))
