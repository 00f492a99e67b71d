"""Models and bundles made for the model-push tests, without TensorFlow.

Bundles are made with the project's own code (keys, manifest, signing). Two models are written
with LiteRT's own flatbuffer schema (`ai_edge_litert.schema_py_generated`, the object API the
converter itself uses):

- `contrast_lookup_model()`: a float [1, 8, 8, 1] -> [1, 10] classifier that looks a row up in a
  10-row table at index int((max - min) * 20) of its input. A flat frame (the blank warm-up input,
  the self-test's mid-grey frame) gives index 0 and works; a real digit frame (black background,
  white strokes) gives index 20 and invoke() fails with "gather index out of bounds". A model
  that passes its self-test and fails on live frames: what probation is for.
- `slow_on_contrast_model(n, base)`: the same shape of classifier, whose WHILE loop counts to
  int((max - min) * n) + base before answering: with base 0 instant on flat frames (so it passes
  its self-test), seconds per invoke on a real digit frame (a stall probation must catch); with
  n = 0 a model of fixed cost (e.g. a few ms, so the pipeline runs its three-thread mode).
- `bomb_bundle(...)`: a zip bomb as an attacker writes it by hand (`raw_zip`): a deflate stream of
  1.5 GiB of zeros (`deflated_zeros`, about 1.5 MB) as model.tflite, declaring whatever size it likes.
- `crashing_model()`: the demo model with the RESHAPE's second input (its shape tensor) marked as
  omitted (-1, which some operators' optional inputs legitimately are). The flatbuffer is whole and
  every index is in range, so edge_agent.runtime.tflite_verify passes it, but both LiteRT 2.3 and
  tflite-runtime 2.14 dereference the missing tensor in allocate_tensors() and die with SIGSEGV:
  only a child process can find out (service/model_guard.py, the self-test of a push).
- `unbounded_shape_model()`: the demo model with the length of one tensor's shape vector set to
  2^20. tflite-runtime 2.14, which does not verify the flatbuffer, read past the end of the model
  and died with SIGSEGV; the verifier refuses it now.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import struct
import zipfile
import zlib
from pathlib import Path

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from support import DEMO, DEMO_MODEL
from edge_agent.host.bundling import BundleRequest, create_bundle_bytes
from edge_agent.delivery.bundle import bundle_to_bytes, read_bundle, sign_manifest
from edge_agent.delivery.keys import PrivateKey, generate_key_pair, load_private_key
from edge_agent.delivery.manifest import manifest_to_bytes
from edge_agent.runtime.tflite_file import _FlatBuffer


def make_keys(folder: Path, *names: str) -> dict[str, PrivateKey]:
    """NAME.key / NAME.pub pairs in `folder`, as `edge-agent keys generate` writes them."""
    keys = {}
    for name in names:
        private, _ = generate_key_pair(folder / name)
        keys[name] = load_private_key(private)
    return keys


def make_bundle(path: Path, model: Path, key: PrivateKey | None, version: str, name: str = "digits",
                task: str = "", labels: Path | None = DEMO / "labels.txt") -> Path:
    """A bundle of a real .tflite, made the way `edge-agent bundle create` makes it."""
    content, _, _ = create_bundle_bytes(BundleRequest(model, name, version, task, labels), key)
    path.write_bytes(content)
    return path


def rebundle(path: Path, template: Path, model_bytes: bytes, key: PrivateKey | None, version: str) -> Path:
    """A bundle whose manifest is the template's with another model (hash and size updated) and signed
    again: a whole, correctly signed bundle around whatever bytes the test needs."""
    manifest = read_bundle(template).manifest
    manifest = dataclasses.replace(manifest, version=version, model_sha256=hashlib.sha256(model_bytes).hexdigest(),
                                   model_size_bytes=len(model_bytes))
    manifest_bytes = manifest_to_bytes(manifest)
    signature = sign_manifest(manifest_bytes, key) if key is not None else None
    path.write_bytes(bundle_to_bytes(manifest_bytes, model_bytes, signature))
    return path


def tamper_manifest(path: Path, old: bytes, new: bytes) -> Path:
    """Change the manifest after signing (the signature no longer matches)."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    members["manifest.json"] = members["manifest.json"].replace(old, new)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    path.write_bytes(buffer.getvalue())
    return path


MB = 1 << 20


def deflated_zeros(size: int) -> tuple[bytes, int]:
    """A raw deflate stream of `size` zero bytes (about size / 1000 bytes), and their CRC-32. One MiB of
    zeros is compressed once, with a full flush so the next copy does not refer back to it; the copies
    and a final empty block make the stream."""
    block = bytes(MB)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(size // MB):
        crc = zlib.crc32(block, crc)
    return segment * (size // MB) + zlib.compressobj(9, zlib.DEFLATED, -15).flush(), crc


def raw_zip(entries: list[tuple[str, bytes, int, int, int]]) -> bytes:
    """A zip archive written by hand from (name, stored data, method, crc, declared uncompressed size): what
    an attacker can write, not what zipfile would."""
    local, central = bytearray(), bytearray()
    for name, data, method, crc, size in entries:
        encoded = name.encode()
        offset = len(local)
        local += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(data), size,
                             len(encoded), 0) + encoded + data
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, len(data),
                               size, len(encoded), 0, 0, 0, 0, 0o644 << 16, offset) + encoded
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), len(local), 0)
    return bytes(local + central + end)


def bomb_bundle(path: Path, template: Path, stream: tuple[bytes, int], declared_bytes: int) -> Path:
    """The template's manifest (unsigned, as an attacker would send it) around a deflated model.tflite of
    1.5 GiB of zeros (about 1.5 MB); member and manifest declare `declared_bytes`."""
    manifest = dataclasses.replace(read_bundle(template).manifest, model_size_bytes=declared_bytes,
                                   model_sha256=hashlib.sha256(b"not the bomb").hexdigest())
    manifest_bytes = manifest_to_bytes(manifest)
    data, crc = stream
    path.write_bytes(raw_zip([("manifest.json", manifest_bytes, 0, zlib.crc32(manifest_bytes), len(manifest_bytes)),
                              ("model.tflite", data, 8, crc, declared_bytes)]))
    return path


def crashing_model() -> bytes:
    data = bytearray(DEMO_MODEL.read_bytes())
    reader = _FlatBuffer(bytes(data))
    subgraph = reader.tables(reader.root(), 2)[0]
    operator = reader.tables(subgraph, 3)[4]  # RESHAPE(flattened activations, shape)
    field = reader._field_pos(operator, 1)  # Operator.inputs
    vector = field + struct.unpack_from("<I", data, field)[0]
    struct.pack_into("<i", data, vector + 4 + 4 * 1, -1)
    return bytes(data)


def unbounded_shape_model() -> bytes:
    data = bytearray(DEMO_MODEL.read_bytes())
    reader = _FlatBuffer(bytes(data))
    subgraph = reader.tables(reader.root(), 2)[0]
    tensor = reader.tables(subgraph, 0)[12]
    field = reader._field_pos(tensor, 0)  # Tensor.shape
    vector = field + struct.unpack_from("<I", data, field)[0]
    struct.pack_into("<I", data, vector, 1 << 20)
    return bytes(data)


def contrast_lookup_model() -> bytes:
    ops = schema.BuiltinOperator
    f32, i32 = schema.TensorType.FLOAT32, schema.TensorType.INT32
    model = schema.ModelT()
    model.version = 3
    model.description = "contrast lookup (edge-agent tests)"
    constants = {2: np.array([1, 2, 3], np.int32), 6: np.array([20.0], np.float32), 9: np.eye(10, dtype=np.float32)}
    model.buffers = []
    for number in range(12):
        buffer = schema.BufferT()
        if number in constants:
            buffer.data = np.frombuffer(constants[number].tobytes(), np.uint8)
        model.buffers.append(buffer)
    specs = [("image", [1, 8, 8, 1], f32), ("axes", [3], i32), ("max", [1], f32), ("min", [1], f32),
             ("range", [1], f32), ("scale", [1], f32), ("scaled", [1], f32), ("index", [1], i32),
             ("table", [10, 10], f32), ("row", [1, 10], f32), ("probs", [1, 10], f32)]
    tensors = []
    for number, (name, shape, kind) in enumerate(specs):
        tensor = schema.TensorT()
        tensor.name, tensor.shape, tensor.type, tensor.buffer = name.encode(), np.array(shape, np.int32), kind, number + 1
        tensors.append(tensor)
    codes = [ops.REDUCE_MAX, ops.REDUCE_MIN, ops.SUB, ops.MUL, ops.CAST, ops.GATHER, ops.SOFTMAX]
    model.operatorCodes = []
    for code in codes:
        operator_code = schema.OperatorCodeT()
        operator_code.builtinCode, operator_code.deprecatedBuiltinCode, operator_code.version = code, code, 1
        model.operatorCodes.append(operator_code)

    def op(code, inputs, outputs, options_type, options):
        operator = schema.OperatorT()
        operator.opcodeIndex = codes.index(code)
        operator.inputs, operator.outputs = np.array(inputs, np.int32), np.array(outputs, np.int32)
        operator.builtinOptionsType, operator.builtinOptions = options_type, options
        return operator

    reducer = schema.ReducerOptionsT()
    cast = schema.CastOptionsT()
    cast.inDataType, cast.outDataType = f32, i32
    softmax = schema.SoftmaxOptionsT()
    softmax.beta = 1.0
    kinds = schema.BuiltinOptions
    subgraph = schema.SubGraphT()
    subgraph.name, subgraph.tensors = b"main", tensors
    subgraph.inputs, subgraph.outputs = np.array([0], np.int32), np.array([10], np.int32)
    subgraph.operators = [
        op(ops.REDUCE_MAX, [0, 1], [2], kinds.ReducerOptions, reducer),
        op(ops.REDUCE_MIN, [0, 1], [3], kinds.ReducerOptions, reducer),
        op(ops.SUB, [2, 3], [4], kinds.SubOptions, schema.SubOptionsT()),
        op(ops.MUL, [4, 5], [6], kinds.MulOptions, schema.MulOptionsT()),
        op(ops.CAST, [6], [7], kinds.CastOptions, cast),
        op(ops.GATHER, [8, 7], [9], kinds.GatherOptions, schema.GatherOptionsT()),
        op(ops.SOFTMAX, [9], [10], kinds.SoftmaxOptions, softmax),
    ]
    model.subgraphs = [subgraph]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


# ~3 ms per invoke (about 0.17 us per WHILE iteration on the development VM): well above the 0.2 ms
# below which a pipeline runs on one thread, so slow_on_contrast_model(0, this) runs the three-thread mode
FIXED_COST_ITERATIONS = 20_000


def slow_on_contrast_model(iterations_per_unit: float, base_iterations: int = 0) -> bytes:
    ops, kinds = schema.BuiltinOperator, schema.BuiltinOptions
    f32, i32 = schema.TensorType.FLOAT32, schema.TensorType.INT32
    codes = [ops.REDUCE_MAX, ops.REDUCE_MIN, ops.SUB, ops.MUL, ops.CAST, ops.WHILE, ops.GATHER, ops.SOFTMAX,
             ops.LESS, ops.ADD]
    model = schema.ModelT()
    model.version, model.buffers = 3, [schema.BufferT()]

    def tensor(name, shape, kind, data=None):
        buffer = schema.BufferT()
        if data is not None:
            buffer.data = np.frombuffer(data.tobytes(), np.uint8)
        model.buffers.append(buffer)
        made = schema.TensorT()
        made.name, made.shape, made.type, made.buffer = name.encode(), np.array(shape, np.int32), kind, len(model.buffers) - 1
        return made

    def op(code, inputs, outputs, options_type, options):
        operator = schema.OperatorT()
        operator.opcodeIndex = codes.index(code)
        operator.inputs, operator.outputs = np.array(inputs, np.int32), np.array(outputs, np.int32)
        operator.builtinOptionsType, operator.builtinOptions = options_type, options
        return operator

    def subgraph(name, tensors, inputs, outputs, operators):
        made = schema.SubGraphT()
        made.name, made.tensors, made.operators = name.encode(), tensors, operators
        made.inputs, made.outputs = np.array(inputs, np.int32), np.array(outputs, np.int32)
        return made

    model.operatorCodes = []
    for code in codes:
        operator_code = schema.OperatorCodeT()
        operator_code.builtinCode, operator_code.deprecatedBuiltinCode, operator_code.version = code, min(code, 127), 1
        model.operatorCodes.append(operator_code)
    reducer, cast, softmax, loop = schema.ReducerOptionsT(), schema.CastOptionsT(), schema.SoftmaxOptionsT(), schema.WhileOptionsT()
    cast.inDataType, cast.outDataType = f32, i32
    softmax.beta = 1.0
    loop.condSubgraphIndex, loop.bodySubgraphIndex = 1, 2
    main = subgraph("main", [
        tensor("image", [1, 8, 8, 1], f32), tensor("axes", [3], i32, np.array([1, 2, 3], np.int32)),
        tensor("max", [1], f32), tensor("min", [1], f32), tensor("range", [1], f32),
        tensor("n", [1], f32, np.array([iterations_per_unit], np.float32)), tensor("scaled", [1], f32),
        tensor("limit", [1], i32), tensor("start", [1], i32, np.array([0], np.int32)), tensor("count", [1], i32),
        tensor("limit_out", [1], i32), tensor("zero", [1], i32),
        tensor("table", [10, 10], f32, np.eye(10, dtype=np.float32)), tensor("row", [1, 10], f32),
        tensor("probs", [1, 10], f32),
        tensor("base", [1], i32, np.array([base_iterations], np.int32)), tensor("total", [1], i32),
    ], [0], [14], [
        op(ops.REDUCE_MAX, [0, 1], [2], kinds.ReducerOptions, reducer),
        op(ops.REDUCE_MIN, [0, 1], [3], kinds.ReducerOptions, reducer),
        op(ops.SUB, [2, 3], [4], kinds.SubOptions, schema.SubOptionsT()),
        op(ops.MUL, [4, 5], [6], kinds.MulOptions, schema.MulOptionsT()),
        op(ops.CAST, [6], [7], kinds.CastOptions, cast),
        op(ops.ADD, [7, 15], [16], kinds.AddOptions, schema.AddOptionsT()),
        op(ops.WHILE, [8, 16], [9, 10], kinds.WhileOptions, loop),
        op(ops.SUB, [9, 9], [11], kinds.SubOptions, schema.SubOptionsT()),
        op(ops.GATHER, [12, 11], [13], kinds.GatherOptions, schema.GatherOptionsT()),
        op(ops.SOFTMAX, [13], [14], kinds.SoftmaxOptions, softmax),
    ])
    condition = subgraph("condition", [tensor("i", [1], i32), tensor("limit", [1], i32),
                                       tensor("less", [1], schema.TensorType.BOOL)], [0, 1], [2],
                         [op(ops.LESS, [0, 1], [2], kinds.LessOptions, schema.LessOptionsT())])
    body = subgraph("body", [tensor("i", [1], i32), tensor("limit", [1], i32),
                             tensor("one", [1], i32, np.array([1], np.int32)), tensor("next", [1], i32)],
                    [0, 1], [3, 1], [op(ops.ADD, [0, 2], [3], kinds.AddOptions, schema.AddOptionsT())])
    model.subgraphs = [main, condition, body]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def random_bytes(size: int) -> bytes:
    return os.urandom(size)
