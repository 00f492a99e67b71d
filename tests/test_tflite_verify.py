"""The model verifier (runtime/tflite_verify.py): every real model passes; each damage a runtime could
crash on is refused with a message naming where it is. Damaged models are made from the demo model with
LiteRT's own flatbuffer schema (meaning) or by changing bytes of the real file (structure)."""

from __future__ import annotations

import struct
import subprocess
import sys

import flatbuffers
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

from support import DEMO_FLOAT_MODEL, DEMO_MODEL, MODELS, REPO
from crafted_models import contrast_lookup_model, crashing_model, slow_on_contrast_model, unbounded_shape_model
from edge_agent.runtime import ModelFileError
from edge_agent.runtime.tflite_file import _FlatBuffer, model_file_from_bytes
from edge_agent.runtime.tflite_verify import MAX_TENSOR_BYTES, ModelInvalid, verify_model

VALID_FILES = [DEMO_MODEL, DEMO_FLOAT_MODEL,
               *(MODELS / f"{n}.tflite" for n in ("ssd_tiny", "ssd_tiny_int8", "sensor_tiny", "edgetpu_fake"))]


def demo() -> schema.ModelT:
    return schema.ModelT.InitFromObj(schema.Model.GetRootAs(DEMO_MODEL.read_bytes(), 0))


def pack(model: schema.ModelT) -> bytes:
    builder = flatbuffers.Builder(1 << 16)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def refused(content: bytes) -> str:
    """The reason the app gives (read_model_file's path), checked to come from the verifier."""
    with pytest.raises(ModelFileError, match="is not a valid TFLite model") as caught:
        model_file_from_bytes("damaged.tflite", content)
    with pytest.raises(ModelInvalid):
        verify_model(content)
    return str(caught.value)


@pytest.mark.parametrize("path", VALID_FILES, ids=lambda p: p.stem)
def test_every_real_model_passes(path):
    verify_model(path.read_bytes())


@pytest.mark.parametrize("make", [contrast_lookup_model, lambda: slow_on_contrast_model(3), lambda: pack(demo())],
                         ids=["gather", "while-loop", "repacked-demo"])
def test_models_made_with_the_schema_pass(make):
    verify_model(make())


def test_the_bench_models_pass_when_made():
    bench = sorted((REPO / "models" / "bench").glob("*.tflite"))
    if not bench:  # made by models/make_bench_models.py (TensorFlow, about a minute); absent in a fresh clone
        pytest.skip("models/bench is empty: run models/make_bench_models.py")
    for path in bench:
        verify_model(path.read_bytes())


def test_the_schema_module_matches_the_installed_litert():
    result = subprocess.run([sys.executable, "models/make_tflite_schema.py", "--check"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def damage(change) -> bytes:
    model = demo()
    change(model, model.subgraphs[0])
    return pack(model)


def set_dim(value):
    def change(model, subgraph):
        subgraph.tensors[13].shape = np.array([1, value, 8, 32], np.int32)
    return change


MEANING = {
    "negative dimension": (set_dim(-1), "tensor 13 ('sequential_1/conv2d_1_2/Relu;"),
    "dimension of 2^27": (set_dim(1 << 27), f"needs 34,359,738,368 bytes, more than {MAX_TENSOR_BYTES:,}"),
    "too many dimensions": (lambda m, s: setattr(s.tensors[13], "shape", np.ones(40, np.int32)), "has 40 dimensions"),
    "shape larger than its weights": (
        lambda m, s: setattr(s.tensors[7], "shape", np.array([32, 3, 3, 64], np.int32)),
        "its shape [32, 3, 3, 64] needs 18,432 bytes, but its buffer 8 holds 9,216"),
    "unknown tensor type": (lambda m, s: setattr(s.tensors[0], "type", 99), "has type code 99"),
    "tensor names a missing buffer": (lambda m, s: setattr(s.tensors[12], "buffer", 400),
                                      "names buffer 400, but the model has 24"),
    "operator input out of range": (lambda m, s: setattr(s.operators[1], "inputs", np.array([12, 9, 90], np.int32)),
                                    "subgraph 0, operator 1's inputs name tensor 90, but there are 20"),
    "operator output below -1": (lambda m, s: setattr(s.operators[2], "outputs", np.array([-7], np.int32)),
                                 "operator 2's outputs name tensor -7"),
    "subgraph output out of range": (lambda m, s: setattr(s, "outputs", np.array([20], np.int32)),
                                     "subgraph 0's outputs name tensor 20, but there are 20"),
    "subgraph input omitted": (lambda m, s: setattr(s, "inputs", np.array([-1], np.int32)),
                               "subgraph 0's inputs name tensor -1"),
    "unknown operator code": (lambda m, s: setattr(s.operators[0], "opcodeIndex", 5),
                              "operator 0 names operator code 5, but the model has 5"),
    "per-channel scales along a missing dimension": (
        lambda m, s: setattr(s.tensors[7].quantization, "quantizedDimension", 4),
        "32 per-channel scales along dimension 4 do not fit its shape [32, 3, 3, 32]"),
    "metadata names a missing buffer": (lambda m, s: setattr(m.metadata[0], "buffer", 99),
                                        "metadata 0 ('min_runtime_version') names buffer 99"),
    "no tensors": (lambda m, s: setattr(s, "tensors", []), "subgraph 0 has no tensors"),
}


@pytest.mark.parametrize("case", list(MEANING))
def test_damaged_meaning_is_refused_with_its_place(case):
    change, expected = MEANING[case]
    assert expected in refused(damage(change))


def control_flow_model(then_index: int, else_index: int, options: bool = True) -> bytes:
    """The demo model with an IF in a second subgraph (calling the given subgraphs) and a third, empty-ish one."""
    model = demo()
    model.operatorCodes.append(schema.OperatorCodeT())
    model.operatorCodes[-1].builtinCode = model.operatorCodes[-1].deprecatedBuiltinCode = schema.BuiltinOperator.IF
    caller = schema.SubGraphT()
    tensors = []
    for name, kind in (("cond", schema.TensorType.BOOL), ("x", schema.TensorType.FLOAT32), ("y", schema.TensorType.FLOAT32)):
        tensor = schema.TensorT()
        tensor.name, tensor.type, tensor.shape, tensor.buffer = name.encode(), kind, np.array([1], np.int32), 0
        tensors.append(tensor)
    caller.tensors, caller.inputs, caller.outputs = tensors, np.array([0, 1], np.int32), np.array([2], np.int32)
    operator = schema.OperatorT()
    operator.opcodeIndex = len(model.operatorCodes) - 1
    operator.inputs, operator.outputs = np.array([0, 1], np.int32), np.array([2], np.int32)
    if options:
        operator.builtinOptionsType = schema.BuiltinOptions.IfOptions
        operator.builtinOptions = schema.IfOptionsT()
        operator.builtinOptions.thenSubgraphIndex, operator.builtinOptions.elseSubgraphIndex = then_index, else_index
    caller.operators = [operator]
    model.subgraphs.append(caller)
    return pack(model)


def test_control_flow_into_an_existing_subgraph_passes():
    verify_model(control_flow_model(0, 0))


def test_control_flow_into_a_missing_subgraph_is_refused():
    assert "subgraph 1, operator 0 runs subgraph 7, but the model has 2" in refused(control_flow_model(0, 7))


def test_a_subgraph_that_runs_itself_is_refused():
    assert "subgraphs call each other in a loop (1 -> 1)" in refused(control_flow_model(0, 1))


def test_control_flow_without_options_reads_as_subgraph_0_like_the_runtime():
    """No IfOptions: the runtime takes the schema default, subgraph 0 (here: a loop when the op is in 0)."""
    verify_model(control_flow_model(0, 0, options=False))
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(control_flow_model(0, 0, options=False), 0))
    model.subgraphs[0].operators.append(model.subgraphs[1].operators[0])
    assert "subgraphs call each other in a loop (0 -> 0)" in refused(pack(model))


def test_signature_naming_a_missing_tensor_is_refused():
    model = demo()
    signature, tensor_map = schema.SignatureDefT(), schema.TensorMapT()
    tensor_map.name, tensor_map.tensorIndex = b"image", 55
    signature.signatureKey, signature.subgraphIndex, signature.inputs, signature.outputs = b"serving_default", 0, [tensor_map], []
    model.signatureDefs = [signature]
    assert "signature 0 names tensor 55 of subgraph 0, which has 20" in refused(pack(model))


def test_constant_strings_must_hold_what_their_shape_declares():
    model = demo()
    strings = [b"cat", b"dog"]
    offsets = np.cumsum([16] + [len(s) for s in strings]).astype(np.int32)
    payload = struct.pack("<i", 2) + offsets.tobytes() + b"".join(strings)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(payload, np.uint8)
    model.buffers.append(buffer)
    tensor = schema.TensorT()
    tensor.name, tensor.type, tensor.shape, tensor.buffer = b"names", schema.TensorType.STRING, np.array([2], np.int32), len(model.buffers) - 1
    model.subgraphs[0].tensors.append(tensor)
    verify_model(pack(model))
    tensor.shape = np.array([3], np.int32)
    assert "does not hold the 3 strings its shape declares" in refused(pack(model))
    tensor.shape = np.array([2], np.int32)
    buffer.data = np.frombuffer(struct.pack("<i", 2) + np.array([16, 19, 90], np.int32).tobytes() + b"catdog", np.uint8)
    assert "its string offsets point outside its data" in refused(pack(model))


# --- structure: bytes of the real file changed, as a damaged copy has them

def positions():
    """Where things are in the real demo file: its reader's own view."""
    data = DEMO_MODEL.read_bytes()
    reader = _FlatBuffer(data)
    subgraph = reader.tables(reader.root(), 2)[0]
    tensor = reader.tables(subgraph, 0)[12]
    return data, reader, subgraph, tensor


def patched(data: bytes, pos: int, fmt: str, value: int) -> bytes:
    changed = bytearray(data)
    struct.pack_into(fmt, changed, pos, value)
    return bytes(changed)


def test_a_shape_vector_longer_than_the_file_is_refused():
    """crafted_models.unbounded_shape_model(): it crashed tflite-runtime 2.14 with SIGSEGV before this check."""
    assert "model.subgraphs[0].tensors[12].shape: a vector of 1,048,576 entries runs past the end" in refused(
        unbounded_shape_model())


def test_what_only_a_runtime_can_find_passes():
    """crafted_models.crashing_model() crashes both runtimes (a required input omitted): that is the child's job."""
    verify_model(crashing_model())


def test_a_vtable_outside_the_file_is_refused():
    data, _, _, tensor = positions()
    assert "model.subgraphs[0].tensors[12]: its vtable at byte" in refused(patched(data, tensor, "<i", -(1 << 20)))


def test_a_table_offset_outside_the_file_is_refused():
    data, reader, subgraph, _ = positions()
    field = reader._field_pos(subgraph, 0)  # SubGraph.tensors
    vector = field + struct.unpack_from("<I", data, field)[0]
    assert "model.subgraphs[0].tensors[3]: the table at byte" in refused(patched(data, vector + 4 + 4 * 3, "<I", 1 << 24))


def test_a_field_stored_outside_its_table_is_refused():
    """(The tensors share one vtable: the first tensor that uses it is named.)"""
    data, reader, _, tensor = positions()
    vtable = tensor - struct.unpack_from("<i", data, tensor)[0]
    assert ".type: stored outside its table" in refused(patched(data, vtable + 4 + 2 * 1, "<H", 4000))


def test_an_unterminated_name_is_refused():
    data, reader, _, tensor = positions()
    field = reader._field_pos(tensor, 3)  # Tensor.name
    start = field + struct.unpack_from("<I", data, field)[0]
    length = struct.unpack_from("<I", data, start)[0]
    assert "tensors[12].name: a string of" in refused(patched(data, start + 4 + length, "<B", 65))


def test_a_buffer_stored_after_the_flatbuffer_must_be_inside_the_file():
    model = demo()
    model.buffers[8].data, model.buffers[8].offset, model.buffers[8].size = None, 1 << 20, 9216
    assert "buffer 8 ends at byte 1,057,792, past the end of the" in refused(pack(model))


def test_shared_tables_cannot_multiply_the_work():
    """Offsets may point many entries at one table (a few times is fine), but a file that makes the verifier
    visit more tables than it has room for is refused: the work stays proportional to the file's size."""
    verify_model(shared_subgraphs(2))
    content = shared_subgraphs(1000)  # 1000 entries, one subgraph of ~60 tables: 60,000 visits in ~60 KB
    assert len(content) < 70_000
    assert "more tables than the file has room for" in refused(content)


def shared_subgraphs(copies: int) -> bytes:
    model = demo()
    builder = flatbuffers.Builder(1 << 16)

    def vector(start, offsets):
        start(builder, len(offsets))
        for offset in reversed(offsets):
            builder.PrependUOffsetTRelative(offset)
        return builder.EndVector()

    buffers = vector(schema.ModelStartBuffersVector, [buffer.Pack(builder) for buffer in model.buffers])
    codes = vector(schema.ModelStartOperatorCodesVector, [code.Pack(builder) for code in model.operatorCodes])
    subgraph = model.subgraphs[0].Pack(builder)
    subgraphs = vector(schema.ModelStartSubgraphsVector, [subgraph] * copies)
    schema.ModelStart(builder)
    schema.ModelAddVersion(builder, 3)
    schema.ModelAddOperatorCodes(builder, codes)
    schema.ModelAddSubgraphs(builder, subgraphs)
    schema.ModelAddBuffers(builder, buffers)
    builder.Finish(schema.ModelEnd(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
