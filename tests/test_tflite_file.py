"""What a .tflite file says about itself, read without a runtime: operators, attached labels and
the roles of the SSD post-processing outputs, checked against the real interpreter and the
flatbuffer schema that ships with LiteRT."""

from __future__ import annotations

import io
import zipfile
from collections import Counter

import numpy as np
import pytest

from support import DEMO, DEMO_FLOAT_MODEL, DEMO_MODEL, MODELS, RUNTIMES
from edge_agent.postprocess import ssd_order_from_roles
from edge_agent.runtime import ModelFileError, load_model, parse_labels, read_model_file
from edge_agent.runtime.builtin_ops import BUILTIN_OPERATOR_NAMES


def schema_operator_counts(path) -> Counter:
    """Operator counts of every subgraph, read with LiteRT's generated flatbuffer schema (an independent reader)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(path.read_bytes(), 0))
    names = {value: key for key, value in vars(schema.BuiltinOperator).items() if not key.startswith("_")}
    counts: Counter = Counter()
    for subgraph in model.subgraphs:
        for operator in subgraph.operators:
            code = model.operatorCodes[operator.opcodeIndex]
            builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
            counts[code.customCode.decode() if builtin == schema.BuiltinOperator.CUSTOM else names[builtin]] += 1
    return counts


def test_demo_model_operator_counts():
    model_file = read_model_file(DEMO_MODEL)
    assert model_file.operator_counts == {"CONV_2D": 3, "FULLY_CONNECTED": 2, "MAX_POOL_2D": 1, "RESHAPE": 1, "SOFTMAX": 1}
    assert model_file.custom_ops == [] and not model_file.needs_edgetpu
    assert model_file.detection_output_roles == {}
    # the float model is the same network without quantisation
    assert read_model_file(DEMO_FLOAT_MODEL).operator_counts == model_file.operator_counts


def test_ssd_tiny_operator_counts_include_the_postprocess_op():
    model_file = read_model_file(MODELS / "ssd_tiny.tflite")
    assert model_file.operator_counts == {"CONV_2D": 5, "RESHAPE": 2, "LOGISTIC": 1, "TFLite_Detection_PostProcess": 1}
    assert model_file.custom_ops == ["TFLite_Detection_PostProcess"] and not model_file.needs_edgetpu


@pytest.mark.parametrize(
    "path",
    [DEMO_MODEL, DEMO_FLOAT_MODEL, *(MODELS / f"{n}.tflite" for n in ("ssd_tiny", "ssd_tiny_int8", "sensor_tiny", "edgetpu_fake"))],
    ids=lambda p: p.stem,
)
def test_operator_counts_match_the_flatbuffer_schema(path):
    assert read_model_file(path).operator_counts == dict(schema_operator_counts(path))


def test_builtin_operator_names_match_the_installed_schema():
    from ai_edge_litert import schema_py_generated as schema

    schema_names = {value: key for key, value in vars(schema.BuiltinOperator).items() if not key.startswith("_")}
    shared = set(schema_names) & set(BUILTIN_OPERATOR_NAMES)
    assert len(shared) >= 150
    assert {code: BUILTIN_OPERATOR_NAMES[code] for code in shared} == {code: schema_names[code] for code in shared}


def test_edgetpu_model_is_recognised_from_its_operator():
    model_file = read_model_file(MODELS / "edgetpu_fake.tflite")
    assert model_file.operator_counts == {"edgetpu-custom-op": 1}
    assert model_file.needs_edgetpu and model_file.custom_ops == ["edgetpu-custom-op"]


def test_demo_model_labels_come_from_the_attached_zip():
    model_file = read_model_file(DEMO_MODEL)
    assert "labels.txt" in model_file.attached_files
    assert model_file.labels == [str(digit) for digit in range(10)]
    assert model_file.labels == parse_labels((DEMO / "labels.txt").read_text())
    assert model_file.name == "digits_int8" and len(model_file.sha256) == 64


def test_models_without_attached_files_have_no_labels():
    model_file = read_model_file(MODELS / "ssd_tiny.tflite")
    assert model_file.attached_files == {} and model_file.labels is None


def test_labels_zip_appended_to_a_model_is_read(tmp_path):
    """The way the TFLite metadata populator attaches files: a zip after the flatbuffer."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("readme.txt", "not the labels")
        bundle.writestr("my_labels.txt", "0 background\n1: cat\n\n2 dog\n")
    path = tmp_path / "sensor_with_labels.tflite"
    path.write_bytes((MODELS / "sensor_tiny.tflite").read_bytes() + archive.getvalue())
    model_file = read_model_file(path)
    assert set(model_file.attached_files) == {"readme.txt", "my_labels.txt"}
    assert model_file.labels == ["background", "cat", "dog"]
    # the appended zip does not disturb the flatbuffer: same operators, still loads and runs
    assert model_file.operator_counts == read_model_file(MODELS / "sensor_tiny.tflite").operator_counts
    model = load_model(path, runtime="litert")
    (output,) = model.run(np.ones((1, 16), np.float32))
    assert output.shape == (1, 4) and output.sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("name", ["ssd_tiny", "ssd_tiny_int8"])
def test_detection_output_roles_point_at_the_right_output_arrays(name, runtime):
    model = load_model(MODELS / f"{name}.tflite", runtime=runtime)
    roles_by_index = model.file.detection_output_roles
    assert sorted(roles_by_index.values()) == ["boxes", "classes", "count", "scores"]
    assert set(roles_by_index) == {spec.index for spec in model.outputs}, "roles must name the interpreter's output tensors"
    roles = [roles_by_index[spec.index] for spec in model.outputs]
    order = ssd_order_from_roles(roles)
    assert order is not None
    image = np.random.default_rng(3).random((1, 64, 64, 3), dtype=np.float32)
    if model.input.dtype == np.uint8:
        image = np.round(image * 255).astype(np.uint8)
    outputs = model.run(image)
    boxes, classes, scores, count = (outputs[i] for i in (order.boxes, order.classes, order.scores, order.count))
    assert boxes.ndim == 3 and boxes.shape[-1] == 4
    assert count.size == 1 and 0 < int(count.reshape(-1)[0]) <= boxes.shape[1]
    n = int(count.reshape(-1)[0])
    assert classes.shape == scores.shape == boxes.shape[:2]
    assert np.all(np.isin(classes[0, :n], [0, 1, 2])), "class ids are whole numbers 0..2"
    assert np.all((scores[0, :n] > 0.25) & (scores[0, :n] <= 1)) and np.all(np.diff(scores[0, :n]) <= 0)
    # ymin < ymax and xmin < xmax for every detection
    assert np.all(boxes[0, :n, 2] > boxes[0, :n, 0]) and np.all(boxes[0, :n, 3] > boxes[0, :n, 1])
    # this export is TF2 style: the interpreter's output order differs from the op's own order
    assert roles != ["boxes", "classes", "scores", "count"]


def test_ssd_order_from_roles_rejects_incomplete_roles():
    assert ssd_order_from_roles(["boxes", "classes", "scores"]) is None
    assert ssd_order_from_roles(["", "", "", ""]) is None
    order = ssd_order_from_roles(["count", "scores", "boxes", "classes"])
    assert (order.boxes, order.classes, order.scores, order.count) == (2, 3, 1, 0)


@pytest.mark.parametrize(
    "text, labels",
    [
        ("person\nbicycle\ncar\n", ["person", "bicycle", "car"]),
        ("0 person\n1 bicycle\n2 traffic light\n", ["person", "bicycle", "traffic light"]),
        ("0: person\n1:bicycle\n2:  car\n", ["person", "bicycle", "car"]),
        ("\n  person  \n\n\nbicycle\n   \n", ["person", "bicycle"]),
        ("person\r\nbicycle\r\n", ["person", "bicycle"]),
        ("0\tperson\n1\tbicycle\n", ["person", "bicycle"]),
        ("0\n1\n2\n", ["0", "1", "2"]),  # a bare number is the label itself (the digits demo)
        # Coral's COCO files skip unused ids: the index, not the line, decides the position
        ("0  person\n1  bicycle\n3  motorcycle\n", ["person", "bicycle", "2", "motorcycle"]),
        ("1 cat\n0 dog\n", ["dog", "cat"]),
        ("person\n1 bicycle\n", ["person", "bicycle"]),  # not every line indexed: line order
        ("", []),
    ],
    ids=["plain", "index-space", "index-colon", "blank-lines", "crlf", "index-tab", "digits", "index-gap", "index-order",
         "mixed", "empty"],
)
def test_parse_labels(text, labels):
    assert parse_labels(text) == labels


@pytest.mark.parametrize("name", ["not_a_model", "truncated"])
def test_broken_files_are_rejected_before_any_runtime(name):
    with pytest.raises(ModelFileError, match="not a valid TFLite model"):
        read_model_file(MODELS / f"{name}.tflite")


def test_a_flatbuffer_cut_anywhere_is_rejected_cleanly(tmp_path):
    """Every prefix of a real model raises ModelFileError (never IndexError or struct.error), so a
    half-copied file never reaches a runtime (tflite-runtime can crash on one)."""
    data = (MODELS / "sensor_tiny.tflite").read_bytes()
    path = tmp_path / "cut.tflite"
    for length in range(0, len(data), 11):
        path.write_bytes(data[:length])
        with pytest.raises(ModelFileError, match="not a valid TFLite model"):
            read_model_file(path)
