"""Ultralytics' metadata.json inside a .tflite: names -> labels, imgsz, task, end2end; and what an attacker
can put there (huge, not JSON, wrong types, code in a literal, nesting, zip bombs, thousands of entries):
the model still loads, the bad field is ignored and named, nothing is executed."""

from __future__ import annotations

import io
import json
import logging
import zipfile

import pytest

from decode_support import planted
from support import MODELS
from edge_agent.config import PipelineConfig, SourceSpec
from edge_agent.decode import ClassCountError
from edge_agent.runtime.export_metadata import MAX_METADATA_BYTES, parse_export_metadata
from edge_agent.runtime.tflite_file import model_file_from_bytes, read_model_file
from edge_agent.service.active_model import build_active_model


def flatbuffer_of(name: str) -> bytes:
    """A layout model's bytes without the zip appended to it."""
    data = (MODELS / f"{name}.tflite").read_bytes()
    start = data.rfind(b"PK\x03\x04")
    return data[:start] if start > 0 else data


def with_zip(model: bytes, entries: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO(model)
    buffer.seek(0, io.SEEK_END)
    with zipfile.ZipFile(buffer, "a", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def metadata_json(**fields) -> bytes:
    metadata = dict(planted.ULTRALYTICS_METADATA, task="detect", names={"0": "a", "1": "b", "2": "c"})
    return json.dumps(dict(metadata, **fields)).encode()


def test_ultralytics_metadata_is_read():
    metadata = read_model_file(MODELS / "yolov8_float.tflite").export_metadata
    assert metadata.names == planted.NAMES and metadata.imgsz == (64, 64) and metadata.task == "detect"
    assert metadata.stride == 32 and metadata.end2end is False and metadata.problems == ()
    pose = read_model_file(MODELS / "yolov8_pose_layout.tflite").export_metadata
    assert pose.task == "pose" and pose.kpt_shape == (17, 3) and pose.names == ("person",)
    assert read_model_file(MODELS / "yolo_end2end.tflite").export_metadata.end2end is True
    assert read_model_file(MODELS / "yolov5_float.tflite").export_metadata is None


@pytest.mark.parametrize("text, expected", [
    (b'{"names": ["x", "y"]}', ("x", "y")),
    (b'{"names": {"1": "y", "0": "x"}}', ("x", "y")),
    (b'{"names": {"0": "x", "2": "z"}}', ("x", "1", "z")),  # a gap is named by its number
    (b'{"names": "{0: \'x\', 1: \'y\'}"}', ("x", "y")),  # a Python-literal string, as some exports store it
    (b'{"names": {"0": "  spaced   out  "}}', ("spaced out",)),
])
def test_names_forms(text, expected):
    assert parse_export_metadata(text, as_json=True).names == expected


@pytest.mark.parametrize("text, problem", [
    (b"not json at all {", "cannot be parsed"),
    (b"[1, 2, 3]", "holds a list"),
    (b'{"names": {"0": 5}}', "every name must be a string"),
    (b'{"names": {"-1": "x"}}', "class ids must lie in"),
    (b'{"names": {"999999999": "x"}}', "class ids must lie in"),
    (b'{"names": {"zero": "x"}}', "is not a class id"),
    (b'{"imgsz": [-640, 640]}', "imgsz"),
    (b'{"imgsz": [1e9, 640]}', "imgsz"),
    (b'{"kpt_shape": [17]}', "kpt_shape"),
    (b'{"task": "mine-bitcoin"}', "task"),
    (b'{"stride": "a lot"}', "stride"),
    (b"\xff\xfe not utf-8", "not UTF-8"),
])
def test_bad_fields_are_ignored_and_named(text, problem):
    metadata = parse_export_metadata(text, as_json=True)
    assert any(problem in p for p in metadata.problems), metadata.problems
    assert metadata.names == () or problem not in ("every name must be a string",)


def test_oversized_metadata_is_not_parsed():
    metadata = parse_export_metadata(b'{"names": ["x"]' + b" " * MAX_METADATA_BYTES + b"}", as_json=True)
    assert metadata.names == () and "more than the" in metadata.problems[0]


def test_a_legacy_literal_is_read_without_evaluating_code(tmp_path):
    marker = tmp_path / "pwned"
    legacy = with_zip(flatbuffer_of("yolov8_float"), {"meta.txt": b"{'names': {0: 'a', 1: 'b', 2: 'c'}, 'task': 'detect'}"})
    assert model_file_from_bytes("m.tflite", legacy).export_metadata.names == ("a", "b", "c")
    evil = with_zip(flatbuffer_of("yolov8_float"), {"meta.txt": f"__import__('os').system('touch {marker}')".encode()})
    assert model_file_from_bytes("m.tflite", evil).export_metadata is None
    assert not marker.exists()
    # deep nesting crashed the process inside ast.literal_eval (a C stack overflow, not an exception)
    for as_json in (False, True):
        deep = parse_export_metadata(b"[" * 100_000 + b"]" * 100_000, as_json=as_json)
        assert "nests more than 32 levels" in deep.problems[0]
    nested_field = parse_export_metadata(('{"names": "' + "[" * 50_000 + '"}').encode(), as_json=True)
    assert nested_field.names == () and nested_field.problems  # the field's literal string is not evaluated either
    fine = parse_export_metadata(b"{'names': {0: 'a (b) [c]'}, 'task': 'detect'}", as_json=False)
    assert fine.names == ("a (b) [c]",)


def test_zip_bombs_and_floods_are_bounded():
    bomb = with_zip(flatbuffer_of("yolov8_float"), {"metadata.json": b" " * (40 << 20)})  # 40 MB of spaces, ~40 kB deflated
    assert len(bomb) < 200_000
    model = model_file_from_bytes("bomb.tflite", bomb)
    assert model.attached_files == {} and model.export_metadata is None
    flood = with_zip(flatbuffer_of("yolov8_float"), {f"f{i}.txt": b"x" for i in range(500)})
    assert len(model_file_from_bytes("flood.tflite", flood).attached_files) == 64


def test_a_zip_that_lies_about_its_size_gives_nothing_instead_of_crashing():
    good = with_zip(flatbuffer_of("yolov8_float"), {"metadata.json": metadata_json()})
    header = good.rfind(b"PK\x01\x02")  # the central directory entry: uncompressed size at offset 24
    lying = good[:header + 24] + (10).to_bytes(4, "little") + good[header + 28:]
    model = model_file_from_bytes("lying.tflite", lying)
    assert model.attached_files == {} and model.export_metadata is None  # the CRC check fails: nothing is used


def test_metadata_that_does_not_fit_the_output_is_a_clear_error(tmp_path):
    path = tmp_path / "five_names.tflite"
    path.write_bytes(with_zip(flatbuffer_of("yolov8_float"), {"metadata.json": metadata_json(
        names={str(i): f"n{i}" for i in range(5)})}))
    with pytest.raises(ClassCountError, match=r"the labels have 5 entries .* holds 3 classes"):
        active_model_from(path)


def test_broken_metadata_does_not_stop_the_model(tmp_path, caplog):
    path = tmp_path / "broken.tflite"
    path.write_bytes(with_zip(flatbuffer_of("yolov8_float"), {"metadata.json": b'{"names": {"0": 7}, "task": "detect"}'}))
    caplog.set_level(logging.WARNING)
    active = active_model_from(path)
    assert active.task == "detection" and active.labels is None
    assert any("every name must be a string" in r.getMessage() for r in caplog.records)


def active_model_from(path):
    return build_active_model(PipelineConfig(name="t", source=SourceSpec(uri="x"), model=str(path)))
