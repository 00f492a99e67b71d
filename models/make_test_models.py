"""Make the small .tflite files the test suite uses (``tests/model_files/``).

All weights are random (seeded) -- these models exercise the runtime plumbing
(shapes, dtypes, custom ops, error paths), not accuracy:

* ``ssd_tiny.tflite``       SSD-style detector, float32 input [1,64,64,3],
                            ending in the ``TFLite_Detection_PostProcess``
                            custom op, exported the way the TF2 Object
                            Detection API does it (``experimental_implements``)
* ``ssd_tiny_int8.tflite``  the same, int8 body with uint8 input; the
                            post-processing op stays float
* ``sensor_tiny.tflite``    non-image model: float32 [1,16] -> softmax [1,4]
* ``edgetpu_fake.tflite``   uint8 image model whose body is one custom op
                            ``edgetpu-custom-op``, like an Edge TPU compiled
                            model; it fails to load without the Edge TPU
                            delegate
* ``not_a_model.tflite``    2 KiB of seeded random bytes
* ``truncated.tflite``      the first 40% of ``sensor_tiny.tflite``
* ``README.md``             one line per file, including the exact error text
                            each runtime gives for the broken files

Run it with a Python that has TensorFlow and this package installed (the test
venv, ``make install-test``)::

    .venv/bin/python models/make_test_models.py [--out DIR] [--device-python PY]

Every model is loaded and invoked (or expected to fail) in ai_edge_litert
(this interpreter) and in tflite_runtime (``--device-python``, default
``.venv/bin/python`` when it exists) and the results go into the README.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's banner out of the summary

import numpy as np

from edge_agent.atomic_file import write_file_atomically

# models/_common.py (Python puts a script's own folder first on sys.path)
from _common import REPO, convert_full_int8, make_parser, run_in_runtime, runtime_pythons

SEED = 0

# ---- SSD geometry ---------------------------------------------------------
SSD_SIZE = 64  # input is [1, 64, 64, 3]
SSD_GRID = 8  # three stride-2 convs: 64 -> 8
SSD_ANCHOR_SIZES = (0.2, 0.35)  # two square anchors per cell -> A = 128
SSD_CLASSES = 3  # + 1 background column in the class predictions
# Head scaling: spread the class logits (x4) and pull them down (-2.5) so
# that uniform-noise input gives confident detections (~0.6..0.9) while an
# all-zero image gives none -- both cases are useful in tests.
SSD_CLS_WEIGHT_SCALE = 4.0
SSD_CLS_BIAS = -2.5
SSD_ATTRS = {  # TFLite_Detection_PostProcess attributes (OD API defaults)
    "max_detections": 10,
    "max_classes_per_detection": 1,
    "use_regular_nms": False,
    "nms_score_threshold": 0.25,
    "nms_iou_threshold": 0.5,
    "y_scale": 10.0,
    "x_scale": 10.0,
    "h_scale": 5.0,
    "w_scale": 5.0,
    "num_classes": SSD_CLASSES,
}
# The op's outputs, always in this order on the op itself; the model's
# output list may be ordered differently (TF1 vs TF2 exports).
POSTPROCESS_OUTPUTS = ("boxes", "classes", "scores", "num_detections")

EDGETPU_OP = "edgetpu-custom-op"


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------
def he_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """He-initialised weights, so activations neither vanish nor explode."""
    fan_in = int(np.prod(shape[:-1]))
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def read_model(buf: bytes):
    """Flatbuffer -> mutable object tree (``ModelT``)."""
    from ai_edge_litert import schema_py_generated as schema

    return schema.ModelT.InitFromObj(schema.Model.GetRootAs(buf, 0))


def write_model(model) -> bytes:
    """Object tree -> flatbuffer bytes with the ``TFL3`` identifier."""
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def op_names(buf: bytes) -> list[str]:
    """Operator names of subgraph 0, in execution order."""
    from ai_edge_litert import schema_py_generated as schema

    by_code = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = read_model(buf)
    names = []
    for op in model.subgraphs[0].operators:
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        names.append(code.customCode.decode() if builtin == schema.BuiltinOperator.CUSTOM else by_code[builtin])
    return names


# --------------------------------------------------------------------------
# SSD detector
# --------------------------------------------------------------------------
def ssd_anchors() -> np.ndarray:
    """[A,4] anchors in the op's center-size layout (ycenter, xcenter, h, w)."""
    centers = (np.arange(SSD_GRID) + 0.5) / SSD_GRID
    ys, xs = np.meshgrid(centers, centers, indexing="ij")
    return np.array(
        [[y, x, s, s] for y, x in zip(ys.ravel(), xs.ravel(), strict=True) for s in SSD_ANCHOR_SIZES],
        dtype=np.float32,
    )


def implements_signature(attrs: dict) -> str:
    """The ``experimental_implements`` string the TFLite converter fuses.

    Same format as ``export_tflite_graph_lib_tf2.py`` in the TF Object
    Detection API: a NameAttrList in proto text form.
    """
    parts = ['name: "TFLite_Detection_PostProcess"']
    for key, val in attrs.items():
        if isinstance(val, bool):
            parts.append(f'attr {{ key: "{key}" value {{ b: {str(val).lower()} }} }}')
        elif isinstance(val, int):
            parts.append(f'attr {{ key: "{key}" value {{ i: {val} }} }}')
        else:
            parts.append(f'attr {{ key: "{key}" value {{ f: {val:f} }} }}')
    return " ".join(parts)


def build_ssd_module():
    """A tf.Module whose ``inference_fn`` is the detector, SSD style.

    The weights are plain constants rather than Keras variables: the TF 2.19
    converter keeps Keras 3 variables as resource variables (VAR_HANDLE /
    READ_VARIABLE ops) instead of freezing them, which breaks both
    calibration and older runtimes.
    """
    import tensorflow as tf

    rng = np.random.default_rng(SEED)
    anchors_per_cell = len(SSD_ANCHOR_SIZES)
    num_anchors = SSD_GRID * SSD_GRID * anchors_per_cell
    body = [  # three stride-2 3x3 convs: 64x64x3 -> 8x8x16
        (he_normal(rng, (3, 3, 3, 8)), np.full(8, 0.05, np.float32)),
        (he_normal(rng, (3, 3, 8, 16)), np.full(16, 0.05, np.float32)),
        (he_normal(rng, (3, 3, 16, 16)), np.full(16, 0.05, np.float32)),
    ]
    # Box encodings stay small (x0.5) so decoded boxes sit near their anchors.
    box_w = he_normal(rng, (3, 3, 16, anchors_per_cell * 4)) * 0.5
    box_b = np.zeros(anchors_per_cell * 4, np.float32)
    cls_w = he_normal(rng, (3, 3, 16, anchors_per_cell * (SSD_CLASSES + 1))) * SSD_CLS_WEIGHT_SCALE
    cls_b = np.full(anchors_per_cell * (SSD_CLASSES + 1), SSD_CLS_BIAS, np.float32)
    anchors = ssd_anchors()
    signature = implements_signature(SSD_ATTRS)

    # There is no TF kernel for the TFLite op: the converter replaces this
    # placeholder function (matched via its ``_implements`` attribute) with
    # the custom op, passing the three arguments as the op's inputs.
    @tf.function(experimental_implements=signature)
    def postprocess(box_encodings, class_predictions, anchors):  # noqa: ARG001
        return [tf.constant(0.0, name=n) for n in ("boxes", "scores", "classes", "num_detections")]

    class SSDModule(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, SSD_SIZE, SSD_SIZE, 3], tf.float32, name="input")])
        def inference_fn(self, image):
            x = image
            for w, b in body:
                x = tf.nn.relu(tf.nn.conv2d(x, w, 2, "SAME") + b)
            box = tf.reshape(tf.nn.conv2d(x, box_w, 1, "SAME") + box_b, [1, num_anchors, 4])
            logits = tf.nn.conv2d(x, cls_w, 1, "SAME") + cls_b
            # Sigmoid score conversion happens before the op, as in the OD API.
            scores = tf.sigmoid(tf.reshape(logits, [1, num_anchors, SSD_CLASSES + 1]))
            # The OD API reverses the placeholder's results ("tf.function
            # seems to reverse order of inputs"); do the same so the output
            # order matches a real TF2 OD API export.
            return postprocess(box, scores, tf.constant(anchors))[::-1]

    return SSDModule()


def ssd_representative(n: int = 64):
    """Calibration images: mostly uniform noise plus some flat/blank images."""
    rng = np.random.default_rng(SEED + 1)
    for i in range(n):
        if i % 8 == 0:
            img = np.full((1, SSD_SIZE, SSD_SIZE, 3), rng.random(), np.float32)
        else:
            img = rng.random((1, SSD_SIZE, SSD_SIZE, 3), dtype=np.float32)
        yield [img]


def convert_ssd(workdir: Path) -> tuple[bytes, bytes]:
    """Return (float model, int8-body model) bytes."""
    import tensorflow as tf

    module = build_ssd_module()
    saved = workdir / "ssd_saved_model"
    tf.saved_model.save(module, str(saved), signatures=module.inference_fn.get_concrete_function())

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    conv.allow_custom_ops = True  # TFLite_Detection_PostProcess is a custom op
    float_model = conv.convert()

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    conv.allow_custom_ops = True
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = ssd_representative
    # BUILTINS as a fallback lets the float-only custom op stay float.
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    conv.inference_input_type = tf.uint8
    int8_model = conv.convert()
    return float_model, int8_model


# --------------------------------------------------------------------------
# sensor model and the Edge TPU look-alike
# --------------------------------------------------------------------------
def convert_function(fn, spec, quantize_uint8_with=None) -> bytes:
    """Convert a constant-weight tf function with one input."""
    import tensorflow as tf

    cf = tf.function(fn, input_signature=[spec]).get_concrete_function()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([cf])
    if quantize_uint8_with is not None:
        return convert_full_int8(conv, quantize_uint8_with, "uint8")
    return conv.convert()


def make_sensor() -> bytes:
    """float32 [1,16] -> Dense(32, relu) -> Dense(4) -> softmax [1,4]."""
    import tensorflow as tf

    rng = np.random.default_rng(SEED + 2)
    w1, b1 = he_normal(rng, (16, 32)), np.zeros(32, np.float32)
    w2, b2 = he_normal(rng, (32, 4)), np.zeros(4, np.float32)

    def sensor(x):
        return tf.nn.softmax(tf.nn.relu(x @ w1 + b1) @ w2 + b2, name="probs")

    return convert_function(sensor, tf.TensorSpec([1, 16], tf.float32, name="features"))


def make_edgetpu_fake() -> bytes:
    """A uint8 image classifier whose whole body is one ``edgetpu-custom-op``.

    An Edge TPU compiled model keeps the CPU model's input and output tensors
    and replaces the ops in between by a single custom op (the compiled
    executable travels in its custom options). We do the same rewrite on a
    real full-integer conversion: drop every operator and put one CUSTOM op
    from the model input to the model output.
    """
    import tensorflow as tf
    from ai_edge_litert import schema_py_generated as schema

    rng = np.random.default_rng(SEED + 3)
    conv_w, conv_b = he_normal(rng, (3, 3, 3, 8)), np.zeros(8, np.float32)
    fc_w, fc_b = he_normal(rng, (8, 4)), np.zeros(4, np.float32)

    def classifier(image):
        x = tf.nn.relu(tf.nn.conv2d(image, conv_w, 2, "SAME") + conv_b)
        return tf.nn.softmax(tf.reduce_mean(x, axis=[1, 2]) @ fc_w + fc_b)

    def representative():
        r = np.random.default_rng(SEED + 4)
        for _ in range(16):
            yield [r.random((1, 32, 32, 3), dtype=np.float32)]

    buf = convert_function(classifier, tf.TensorSpec([1, 32, 32, 3], tf.float32, name="image"), representative)
    model = read_model(buf)
    custom = schema.OperatorCodeT()
    custom.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    custom.builtinCode = schema.BuiltinOperator.CUSTOM
    custom.customCode = EDGETPU_OP
    custom.version = 1
    model.operatorCodes = [custom]

    sub = model.subgraphs[0]
    op = schema.OperatorT()
    op.opcodeIndex = 0
    op.inputs = list(sub.inputs)
    op.outputs = list(sub.outputs)
    op.builtinOptionsType = schema.BuiltinOptions.NONE
    # Stand-in for the compiled Edge TPU executable.
    op.customOptions = list(b"fake edgetpu executable (made by models/make_test_models.py)")
    sub.operators = [op]
    return write_model(model)


# --------------------------------------------------------------------------
# runtime check (run in a subprocess per runtime)
# --------------------------------------------------------------------------
# One fresh process per (runtime, model, load mode): a runtime that crashes
# on a broken file (tflite_runtime can segfault on a truncated flatbuffer)
# is then recorded as a crash instead of taking the whole check down. The
# model is loaded by bare file name (cwd = the output dir) so error texts
# that quote the path stay short and stable.
_CHECK_SNIPPET = r"""
import json, sys, numpy as np
name, mode = sys.argv[2:4]

def desc(d):
    return {"name": d["name"], "shape": [int(s) for s in d["shape"]],
            "dtype": np.dtype(d["dtype"]).name, "index": int(d["index"]),
            "quantization": [float(d["quantization"][0]), int(d["quantization"][1])]}

def fill(d, rng):
    if np.dtype(d["dtype"]).kind == "f":
        return rng.random(d["shape"], dtype=np.float32).astype(d["dtype"])
    info = np.iinfo(d["dtype"])
    return rng.integers(info.min, info.max, d["shape"], endpoint=True).astype(d["dtype"])

r = {}
stage = "load"
try:
    if mode == "path":
        it = Interpreter(model_path=name)
    else:
        it = Interpreter(model_content=open(name, "rb").read())
    stage = "allocate_tensors"
    it.allocate_tensors()
    r["inputs"] = [desc(d) for d in it.get_input_details()]
    r["outputs"] = [desc(d) for d in it.get_output_details()]
    stage = "invoke"
    rng = np.random.default_rng(0)
    for d in it.get_input_details():
        it.set_tensor(d["index"], fill(d, rng))
    it.invoke()
    r["values"] = {str(d["index"]): it.get_tensor(d["index"]).ravel()[:12].tolist()
                   for d in it.get_output_details()}
    r["signatures"] = {
        key: {k: int(d["index"]) for k, d in it.get_signature_runner(key).get_output_details().items()}
        for key in it.get_signature_list()
    }
    r["ok"] = True
except Exception as e:
    r.update(ok=False, stage=stage, error_type=type(e).__name__, error=str(e),
             error_is_value_error=isinstance(e, ValueError))
print(json.dumps(r))
"""


def check_one(py: str, runtime: str, out: Path, name: str, mode: str) -> dict:
    proc = run_in_runtime(py, runtime, _CHECK_SNIPPET, [name, mode], cwd=out)
    if proc.returncode < 0:  # killed by a signal: the runtime crashed
        return {"ok": False, "crashed": signal.Signals(-proc.returncode).name}
    if proc.returncode != 0:
        raise RuntimeError(f"{runtime} check of {name} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_runtimes(out: Path, names: list[str], device_python: str | None) -> dict[str, dict]:
    """runtime -> model -> result of loading by path (+ by bytes if that failed)."""
    result = {}
    for runtime, py in runtime_pythons(device_python):
        res = result[runtime] = {}
        for name in names:
            r = res[name] = check_one(py, runtime, out, name, "path")
            if not r["ok"]:
                # Loading from bytes can fail differently from loading a path.
                r["content"] = check_one(py, runtime, out, name, "content")
    return result


def ssd_output_roles(buf: bytes) -> dict[int, str]:
    """Tensor index -> role, from the post-processing op's own output order."""
    model = read_model(buf)
    sub = model.subgraphs[0]
    for op in sub.operators:
        code = model.operatorCodes[op.opcodeIndex]
        if code.customCode == b"TFLite_Detection_PostProcess":
            return dict(zip(op.outputs, POSTPROCESS_OUTPUTS, strict=True))
    raise AssertionError("TFLite_Detection_PostProcess not in model")


# --------------------------------------------------------------------------
# README
# --------------------------------------------------------------------------
def io_text(tensors: list[dict], roles: dict[int, str] | None = None) -> str:
    parts = []
    for t in tensors:
        role = f"{roles[t['index']]}=" if roles else ""
        q = f" q={t['quantization'][0]:.6g}/{t['quantization'][1]}" if t["dtype"] in ("int8", "uint8") else ""
        parts.append(f"{role}`{t['name']}` {t['shape']} {t['dtype']}{q}")
    return ", ".join(parts)


def quote(text: str) -> str:
    """Exact text on one line: JSON escapes (newline shows as \\n)."""
    return "`" + json.dumps(text)[1:-1] + "`"


def failure_text(r: dict) -> str:
    if "crashed" in r:
        return f"CRASHES the process ({r['crashed']})"
    text = f"fails at `{r['stage']}()` with {r['error_type']}: {quote(r['error'])}"
    if r["error_type"] != "ValueError" and r["error_is_value_error"]:
        text += f" ({r['error_type']} is a ValueError subclass)"
    return text


def error_text(r: dict) -> str:
    """Failure by path, and by ``model_content=`` bytes when that differs."""
    text = failure_text(r)
    c = r.get("content")
    if c is not None and failure_text(c) != text:
        text += f"; with `model_content=` bytes instead: {failure_text(c)}"
    return text


def signature_text(r: dict, roles: dict[int, str] | None) -> str:
    parts = []
    for key, outs in r.get("signatures", {}).items():
        named = ", ".join(f"{k}={roles[i] if roles else i}" for k, i in sorted(outs.items()))
        parts.append(f"signature `{key}` outputs: {named}")
    return "; ".join(parts)


def readme(out: Path, checks: dict[str, dict], descriptions: dict[str, str], roles: dict) -> str:
    lines = [
        "# Test models",
        "",
        "Generated by `models/make_test_models.py` (random seeded weights; do not edit by hand).",
        "Regenerate: `.venv-host/bin/python models/make_test_models.py`.",
        "Error texts are quoted exactly (JSON-escaped, `\\n` = newline), loading by the bare file name",
        "(`Interpreter(model_path=NAME)` with cwd = this directory).",
        "",
    ]
    rt0 = next(iter(checks))
    for name, what in descriptions.items():
        size = (out / name).stat().st_size
        line = f"- `{name}` ({size} B): {what}"
        r0 = checks[rt0][name]
        if r0.get("ok"):
            line += f" Inputs: {io_text(r0['inputs'])}. Outputs in `get_output_details()` order: "
            line += io_text(r0["outputs"], roles.get(name)) + "."
            if r0.get("signatures"):
                line += " " + signature_text(r0, roles.get(name)) + "."
        for rt, res in checks.items():
            r = res[name]
            line += f" **{rt}**: " + ("loads and invokes." if r.get("ok") else error_text(r) + ".")
        lines.append(line)
    lines += [
        "",
        "Caveat (seen while making these files): tflite_runtime 2.14 does not verify the flatbuffer, so it reads",
        "a truncated file out of bounds. By path the bytes past EOF come from the zero-filled mmap page and it",
        "raises ValueError; from `model_content=` bytes it read the Python heap and SEGFAULTED the process in",
        "some runs (heap-layout dependent: e.g. on the 2nd or 3rd load of `truncated.tflite` in one process).",
        "ai_edge_litert verifies and always raises ValueError. A cheap pure-Python pre-check that rejects both",
        "broken files before a runtime sees them: `schema_py_generated.ModelT.InitFromObj(Model.GetRootAs(buf, 0))`",
        "(from ai_edge_litert) raises `struct.error` on them.",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = make_parser(
        __doc__.splitlines()[0], REPO / "tests" / "model_files", "python with tflite_runtime for the cross-runtime check"
    )
    args = ap.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    import tensorflow as tf

    tf.random.set_seed(SEED)
    with tempfile.TemporaryDirectory() as tmp:
        ssd_float, ssd_int8 = convert_ssd(Path(tmp))
    sensor = make_sensor()
    models = {
        "ssd_tiny.tflite": ssd_float,
        "ssd_tiny_int8.tflite": ssd_int8,
        "sensor_tiny.tflite": sensor,
        "edgetpu_fake.tflite": make_edgetpu_fake(),
        "not_a_model.tflite": np.random.default_rng(SEED + 5).bytes(2048),
        "truncated.tflite": sensor[: int(len(sensor) * 0.4)],
    }
    for name, data in models.items():
        write_file_atomically(out / name, data)

    assert "TFLite_Detection_PostProcess" in op_names(ssd_float)
    assert "TFLite_Detection_PostProcess" in op_names(ssd_int8)
    assert op_names(models["edgetpu_fake.tflite"]) == [EDGETPU_OP]

    roles = {n: ssd_output_roles(models[n]) for n in ("ssd_tiny.tflite", "ssd_tiny_int8.tflite")}
    checks = check_runtimes(out, list(models), args.device_python or None)

    a = SSD_ATTRS
    ssd_what = (
        f"SSD-style detector, random weights, {SSD_GRID * SSD_GRID * len(SSD_ANCHOR_SIZES)} anchors, "
        f"{SSD_CLASSES} classes (ids 0..{SSD_CLASSES - 1}), ends in custom op `TFLite_Detection_PostProcess` "
        f"(max_detections={a['max_detections']}, score threshold {a['nms_score_threshold']}, "
        f"iou {a['nms_iou_threshold']}, fast NMS). TF2 OD API export layout. Uniform-noise input gives "
        f"{a['max_detections']} detections with scores ~0.55-0.9, a flat 0.5 gray image {a['max_detections']} at 0.27, "
        "an all-zero image num_detections=0. "
        "Rows past num_detections are NOT cleared between invokes (they keep stale values)."
    )
    descriptions = {
        "ssd_tiny.tflite": ssd_what + " Float32 throughout.",
        "ssd_tiny_int8.tflite": ssd_what + " int8-quantised body, uint8 input (scale 1/255, zero point 0), "
        "post-processing and outputs stay float32.",
        "sensor_tiny.tflite": "non-image model: Dense(32, relu) -> Dense(4) -> softmax, random weights.",
        "edgetpu_fake.tflite": f"Edge TPU look-alike: uint8 image classifier whose only operator is the custom op "
        f"`{EDGETPU_OP}` (a real full-int8 conversion with its ops replaced). Expected to FAIL to load "
        "without the Edge TPU delegate.",
        "not_a_model.tflite": "2048 seeded random bytes, not a flatbuffer. Expected to FAIL.",
        "truncated.tflite": "first 40% of the bytes of `sensor_tiny.tflite`. Expected to FAIL.",
    }
    # keep the section models/make_layout_models.py maintains in the same README
    previous = (out / "README.md").read_text() if (out / "README.md").exists() else ""
    layout_section = previous[previous.index("## Layout models"):] if "## Layout models" in previous else ""
    text = readme(out, checks, descriptions, roles) + ("\n" + layout_section if layout_section else "")
    write_file_atomically(out / "README.md", text.encode())

    # ---- summary / self-check -------------------------------------------
    expect_ok = {"ssd_tiny.tflite", "ssd_tiny_int8.tflite", "sensor_tiny.tflite"}
    problems = []
    for rt, res in checks.items():
        print(f"== {rt}")
        for name, r in res.items():
            if r.get("ok"):
                print(f"  {name:22s} ok  out: {io_text(r['outputs'], roles.get(name))}")
            else:
                print(f"  {name:22s} {error_text(r)}")
            if r.get("ok") != (name in expect_ok):
                problems.append(f"{rt}: {name} ok={r.get('ok')}")
    for name in roles:
        r = checks["ai_edge_litert"][name]
        vals = {roles[name][t["index"]]: r["values"][str(t["index"])] for t in r["outputs"]}
        top = max(vals["scores"])
        print(f"{name}: num_detections={vals['num_detections'][0]:.0f} top score={top:.2f} on uniform noise")
        if top <= 0.3:
            problems.append(f"{name}: no detection above 0.3")
    for name in models:
        print(f"{(out / name).stat().st_size:8d}  {out / name}")
    print(f"done in {time.time() - t0:.1f}s")
    for p in problems:
        print("PROBLEM:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
