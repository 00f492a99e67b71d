"""Check a whole .tflite flatbuffer before any runtime reads it, so a damaged file is refused, not run.

tflite-runtime 2.14 does not verify the flatbuffer it is given; LiteRT verifies its structure but not
what the values mean. Measured with tests/model_fuzz.py: 39 of 200 byte-mutated copies of the demo
model killed tflite-runtime with SIGSEGV (offsets, vectors and vtables pointing outside the file); all
of them are refused here. Two passes:

  structure  every table, vtable, offset, vector and string of every table the schema defines
             (runtime/tflite_schema.py, generated from the TFLite schema) lies inside the file,
             like flatc's own verifier;
  meaning    every tensor's shape (non-negative, a sane rank and size, no larger than its constant
             data), type, buffer and quantisation; every buffer's bounds; every operator's opcode
             and tensor indexes; the subgraphs control-flow operators call (in range, no cycle);
             signatures and metadata.

A model that passes can still crash an interpreter (a kernel's own bug); service/model_guard.py loads
every model in a child process first for that.
"""

from __future__ import annotations

import struct

from edge_agent.errors import EdgeAgentError
from edge_agent.runtime.tflite_schema import TABLES, UNIONS

MAX_TENSOR_BYTES = 1 << 30  # one tensor; larger ones are a damaged shape (sizes overflow 32-bit ints at 2 GiB)
MAX_TOTAL_TENSOR_BYTES = 4 << 30  # all tensors of the model together: more than a board's memory
MAX_RANK = 16  # TFLite's kernels support at most 6-8 dimensions; 16 leaves room without allowing nonsense
MAX_DEPTH = 64  # nesting of tables, as flatc's verifier

# bits per element by TensorType code (schema.fbs); None: no fixed size (string, resource, variant)
ELEMENT_BITS = (
    32, 16, 32, 8, 64, None, 8, 16, 64, 8,  # float32 float16 int32 uint8 int64 string bool int16 complex64 int8
    64, 128, 64, None, None, 32, 16, 4, 16, 2,  # float64 complex128 uint64 resource variant uint32 uint16 int4 bfloat16 int2
    4, 8, 8,  # uint4 float8_e4m3fn float8_e5m2
)
STRING_TYPE = 5

# Operators that run other subgraphs: builtin code -> (union, options table, fields holding subgraph indexes).
# A missing or mismatched options table reads as the schema default (index 0), as the runtime reads it.
SUBGRAPH_CALLS = {
    31: ("BuiltinOptions", "CallOptions", (0,)),  # CALL
    118: ("BuiltinOptions", "IfOptions", (0, 1)),  # IF
    119: ("BuiltinOptions", "WhileOptions", (0, 1)),  # WHILE
    129: ("BuiltinOptions", "CallOnceOptions", (0,)),  # CALL_ONCE
    174: ("BuiltinOptions2", "StablehloReduceOptions", (1,)),
    190: ("BuiltinOptions2", "StablehloScatterOptions", (6,)),
    198: ("BuiltinOptions2", "StablehloReduceWindowOptions", (5,)),
    199: ("BuiltinOptions2", "StablehloSortOptions", (2,)),
    200: ("BuiltinOptions2", "StablehloWhileOptions", (0, 1)),
    206: ("BuiltinOptions2", "StableHLOCompositeOptions", (1,)),
    209: ("BuiltinOptions2", "StablehloCaseOptions", (0,)),  # a vector of indexes
}
_UNION_FIELD = {"BuiltinOptions": 3, "BuiltinOptions2": 11}  # Operator's *_type fields
_MEMBER_CODE = {(union, table): code for union, members in UNIONS.items() for code, table in members.items()}


class ModelInvalid(EdgeAgentError, ValueError):
    """The bytes are not a well-formed TFLite model; str(err) says where and what."""


class _Reader:
    """Bounds-checked reads of little-endian values."""

    def __init__(self, data: bytes):
        self.data = data
        self.size = len(data)

    def read(self, fmt: str, pos: int, what: str) -> int:
        width = struct.calcsize(fmt)
        if pos < 0 or pos + width > self.size:
            raise ModelInvalid(f"{what}: byte {pos} is outside the {self.size:,}-byte file")
        return struct.unpack_from(fmt, self.data, pos)[0]

    def field_pos(self, table: int, number: int) -> int | None:
        """Where field `number` of the table at `table` is stored; None when absent (after verification)."""
        vtable = table - struct.unpack_from("<i", self.data, table)[0]
        vtable_size = struct.unpack_from("<H", self.data, vtable)[0]
        if 4 + 2 * number >= vtable_size:
            return None
        offset = struct.unpack_from("<H", self.data, vtable + 4 + 2 * number)[0]
        return table + offset if offset else None

    def scalar(self, table: int, number: int, fmt: str, default: int = 0) -> int:
        pos = self.field_pos(table, number)
        return default if pos is None else struct.unpack_from(fmt, self.data, pos)[0]

    def target(self, table: int, number: int) -> int | None:
        pos = self.field_pos(table, number)
        return None if pos is None else pos + struct.unpack_from("<I", self.data, pos)[0]

    def vector(self, table: int, number: int, fmt: str) -> tuple:
        start = self.target(table, number)
        if start is None:
            return ()
        count = struct.unpack_from("<I", self.data, start)[0]
        return struct.unpack_from(f"<{count}{fmt}", self.data, start + 4)

    def vector_span(self, table: int, number: int) -> tuple[int, int] | None:
        """(start, length) of a byte vector, or None when absent."""
        start = self.target(table, number)
        if start is None:
            return None
        return start + 4, struct.unpack_from("<I", self.data, start)[0]

    def tables(self, table: int, number: int) -> list[int]:
        start = self.target(table, number)
        if start is None:
            return []
        count = struct.unpack_from("<I", self.data, start)[0]
        return [start + 4 + 4 * i + struct.unpack_from("<I", self.data, start + 4 + 4 * i)[0] for i in range(count)]

    def string(self, table: int, number: int) -> str:
        start = self.target(table, number)
        if start is None:
            return ""
        length = struct.unpack_from("<I", self.data, start)[0]
        return self.data[start + 4:start + 4 + length].decode("utf-8", "replace")


def verify_model(content: bytes) -> None:
    """Raise ModelInvalid naming the first problem that could make a runtime read out of bounds or crash."""
    if len(content) < 8:
        raise ModelInvalid(f"only {len(content)} bytes")
    if content[4:8] != b"TFL3":
        raise ModelInvalid("no TFL3 file identifier")
    reader = _Reader(content)
    _Structure(reader).table(reader.read("<I", 0, "the root offset"), "Model", ("model",), 0)
    _check_meaning(reader)


_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_U16_PAIR = struct.Struct("<HH")


class _Structure:
    """The structural pass: every byte any accessor of the schema could read lies inside the file."""

    def __init__(self, reader: _Reader):
        self.data = reader.data
        self.size = reader.size
        self.tables_left = reader.size // 4 + 16  # distinct tables need 4 bytes each: more means shared offsets

    def table(self, pos: int, name: str, path: tuple, depth: int) -> None:
        data, size = self.data, self.size
        if depth > MAX_DEPTH:
            raise _error(path, f"tables nested more than {MAX_DEPTH} deep")
        self.tables_left -= 1
        if self.tables_left < 0:
            raise _error(path, "more tables than the file has room for (offsets point at the same bytes)")
        if pos + 4 > size:
            raise _error(path, f"the table at byte {pos:,} is outside the {size:,}-byte file")
        vtable = pos - _I32.unpack_from(data, pos)[0]
        if vtable < 0 or vtable + 4 > size:
            raise _error(path, f"its vtable at byte {vtable:,} is outside the {size:,}-byte file")
        vtable_size, table_size = _U16_PAIR.unpack_from(data, vtable)
        if vtable_size < 4 and vtable_size % 2 == 0:
            return  # a vtable without fields (flatc's verifier allows it): every field reads as its default
        if vtable_size % 2 or vtable + vtable_size > size:
            raise _error(path, f"its vtable ({vtable_size} bytes at byte {vtable:,}) does not fit in the file")
        if table_size < 4 or pos + table_size > size:
            raise _error(path, f"the table ({table_size} bytes at byte {pos:,}) runs past the end of the file")
        fields = TABLES[name]
        offsets = struct.unpack_from(f"<{(vtable_size - 4) // 2}H", data, vtable + 4)
        for number, offset in enumerate(offsets):
            if not offset:
                continue
            kind = fields.get(number)
            if kind is None:  # a field newer than our schema: no runtime we load reads it
                continue
            width = kind[1] if kind[0] == "scalar" else 4
            if offset + width > table_size:
                raise _error(path + (kind[2],), "stored outside its table")
            if kind[0] != "scalar":
                self.field(pos, pos + offset, offsets, number, kind, path, depth)

    def field(self, table: int, pos: int, offsets: tuple, number: int, kind: tuple, path: tuple, depth: int) -> None:
        data, size = self.data, self.size
        category, detail, label = kind
        target = pos + _U32.unpack_from(data, pos)[0]
        if category == "union":
            type_offset = offsets[number - 1]  # checked before this field: fields go in order
            code = data[table + type_offset] if type_offset else 0
            member = UNIONS[detail].get(code)
            if member is not None:  # an unknown member is skipped by every runtime too
                self.table(target, member, path + (label,), depth + 1)
            return
        if category == "table":
            self.table(target, detail, path + (label,), depth + 1)
            return
        if target + 4 > size:
            raise _error(path + (label,), f"its offset points at byte {target:,}, outside the {size:,}-byte file")
        count = _U32.unpack_from(data, target)[0]
        if category == "string":
            if target + 4 + count + 1 > size or data[target + 4 + count] != 0:
                raise _error(path + (label,), f"a string of {count:,} bytes runs past the end of the file")
            return
        element = detail if category == "vector" else 4
        if target + 4 + count * element > size:
            raise _error(path + (label,), f"a vector of {count:,} entries runs past the end of the {size:,}-byte file")
        if category == "tables":
            for index, offset in enumerate(struct.unpack_from(f"<{count}I", data, target + 4)):
                self.table(target + 4 + 4 * index + offset, detail, path + ((label, index),), depth + 1)
        elif category == "strings":
            for index, offset in enumerate(struct.unpack_from(f"<{count}I", data, target + 4)):
                start = target + 4 + 4 * index + offset
                length = _U32.unpack_from(data, start)[0] if start + 4 <= size else size
                if start + 4 + length + 1 > size:
                    raise _error(path + ((label, index),), "the string runs past the end of the file")


def _error(path: tuple, problem: str) -> ModelInvalid:
    return ModelInvalid(f"{_path_text(path)}: {problem}")


def _path_text(path: tuple) -> str:
    return ".".join(part if isinstance(part, str) else f"{part[0]}[{part[1]}]" for part in path)


def _check_meaning(r: _Reader) -> None:
    model = r.read("<I", 0, "the root offset")
    subgraphs = r.tables(model, 2)
    if not subgraphs:
        raise ModelInvalid("no subgraphs")
    buffers = r.tables(model, 4)
    opcodes = [max(r.scalar(code, 0, "<b"), r.scalar(code, 3, "<i")) for code in r.tables(model, 1)]
    buffer_sizes = [_check_buffer(r, number, buffer) for number, buffer in enumerate(buffers)]
    total = 0
    calls: dict[int, set[int]] = {}
    for number, subgraph in enumerate(subgraphs):
        where = f"subgraph {number}"
        tensors = r.tables(subgraph, 0)
        if not tensors:
            raise ModelInvalid(f"{where} has no tensors")
        for index, tensor in enumerate(tensors):
            total += _check_tensor(r, tensor, f"{where}, tensor {index}", buffer_sizes)
        for name, field in (("inputs", 1), ("outputs", 2)):
            _check_indexes(r.vector(subgraph, field, "i"), len(tensors), f"{where}'s {name}", optional=False)
        calls[number] = set()
        for index, operator in enumerate(r.tables(subgraph, 3)):
            calls[number] |= _check_operator(r, operator, f"{where}, operator {index}", opcodes, len(tensors),
                                             len(subgraphs))
    if total > MAX_TOTAL_TENSOR_BYTES:
        raise ModelInvalid(f"its tensors need {total:,} bytes together, more than the {MAX_TOTAL_TENSOR_BYTES:,} "
                           "any board has: a shape is damaged")
    _check_no_cycle(calls)
    for index, metadata in enumerate(r.tables(model, 6)):
        if r.scalar(metadata, 1, "<I") >= len(buffers):
            raise ModelInvalid(f"metadata {index} ({r.string(metadata, 0)!r}) names buffer "
                               f"{r.scalar(metadata, 1, '<I')}, but the model has {len(buffers)}")
    _check_indexes(r.vector(model, 5, "i"), len(buffers), "metadata_buffer", optional=False)
    for index, signature in enumerate(r.tables(model, 7)):
        subgraph = r.scalar(signature, 4, "<I")
        if subgraph >= len(subgraphs):
            raise ModelInvalid(f"signature {index} names subgraph {subgraph}, but the model has {len(subgraphs)}")
        count = len(r.tables(subgraphs[subgraph], 0))
        for field in (0, 1):
            for tensor_map in r.tables(signature, field):
                if r.scalar(tensor_map, 1, "<I") >= count:
                    raise ModelInvalid(f"signature {index} names tensor {r.scalar(tensor_map, 1, '<I')} of subgraph "
                                       f"{subgraph}, which has {count}")


def _check_buffer(r: _Reader, number: int, buffer: int) -> int:
    """The buffer's size in bytes, after checking that data stored after the flatbuffer is inside the file."""
    span = r.vector_span(buffer, 0)
    offset, size = r.scalar(buffer, 1, "<Q"), r.scalar(buffer, 2, "<Q")
    if offset > 1:  # weights stored after the flatbuffer (models over 2 GB); 1 is the converter's placeholder
        if offset + size > r.size:
            raise ModelInvalid(f"buffer {number} ends at byte {offset + size:,}, past the end of the {r.size:,}-byte file")
        return size
    return span[1] if span is not None else 0


def _check_tensor(r: _Reader, tensor: int, where: str, buffer_sizes: list[int]) -> int:
    """Check one tensor; the bytes it needs at run time (0 for constants, which the file holds)."""
    name = r.string(tensor, 3)
    where = f"{where} ({name[:60]!r})" if name else where
    type_code = r.scalar(tensor, 1, "<b")
    if not 0 <= type_code < len(ELEMENT_BITS):
        raise ModelInvalid(f"{where} has type code {type_code}, which no TFLite runtime knows")
    shape = r.vector(tensor, 0, "i")
    if len(shape) > MAX_RANK:
        raise ModelInvalid(f"{where} has {len(shape)} dimensions (at most {MAX_RANK} are sane)")
    if any(d < 0 for d in shape):
        raise ModelInvalid(f"{where} has a negative dimension in its shape {list(shape)}")
    signature = r.vector(tensor, 7, "i")
    if len(signature) > MAX_RANK or any(d < -1 for d in signature):  # -1: a dimension known only at run time
        raise ModelInvalid(f"{where} has a damaged shape signature {list(signature[:MAX_RANK + 1])}")
    elements = 1
    for dimension in shape:
        elements *= dimension
    bits = ELEMENT_BITS[type_code]
    needed = (elements * bits + 7) // 8 if bits is not None else 0
    if needed > MAX_TENSOR_BYTES:
        raise ModelInvalid(f"{where}: its shape {list(shape)} needs {needed:,} bytes, more than {MAX_TENSOR_BYTES:,}: "
                           "a dimension is damaged")
    buffer = r.scalar(tensor, 2, "<I")
    if buffer >= len(buffer_sizes):
        raise ModelInvalid(f"{where} names buffer {buffer}, but the model has {len(buffer_sizes)}")
    size = buffer_sizes[buffer] if buffer else 0
    sparse = r.target(tensor, 6) is not None
    if size and not sparse:  # constant data: the runtime reads `needed` bytes of it
        if type_code == STRING_TYPE:
            _check_strings(r, tensor, buffer, elements, where)
        elif needed > size:
            raise ModelInvalid(f"{where}: its shape {list(shape)} needs {needed:,} bytes, but its buffer {buffer} "
                               f"holds {size:,}")
    quantization = r.target(tensor, 4)
    if quantization is not None:
        _check_quantization(r, quantization, shape, where)
    return 0 if size else needed


def _check_strings(r: _Reader, tensor: int, buffer: int, elements: int, where: str) -> None:
    """A constant string tensor holds: count, count + 1 offsets, the bytes; kernels trust all three."""
    model = r.read("<I", 0, "the root offset")
    span = r.vector_span(r.tables(model, 4)[buffer], 0)
    if span is None:
        return  # stored after the flatbuffer: bounds checked, content left to the runtime
    start, length = span
    count = r.read("<i", start, where) if length >= 4 else -1
    if count != elements or length < 4 * (count + 2):
        raise ModelInvalid(f"{where}: its string data does not hold the {elements:,} strings its shape declares")
    offsets = struct.unpack_from(f"<{count + 1}i", r.data, start + 4)
    if offsets[0] != 4 * (count + 2) or offsets[-1] > length or any(b < a for a, b in zip(offsets, offsets[1:])):
        raise ModelInvalid(f"{where}: its string offsets point outside its data")


def _check_quantization(r: _Reader, quantization: int, shape: tuple, where: str) -> None:
    scales = r.vector(quantization, 2, "f")
    if len(scales) <= 1 or r.target(quantization, 5) is not None:  # per-tensor, or a custom/blockwise scheme
        return
    dimension = r.scalar(quantization, 6, "<i")
    if not 0 <= dimension < len(shape) or shape[dimension] != len(scales):
        raise ModelInvalid(f"{where}: {len(scales)} per-channel scales along dimension {dimension} do not fit its "
                           f"shape {list(shape)}")


def _check_indexes(indexes: tuple, count: int, where: str, optional: bool) -> None:
    lowest = -1 if optional else 0  # -1 marks an omitted optional tensor
    for index in indexes:
        if not lowest <= index < count:
            raise ModelInvalid(f"{where} name tensor {index}, but there are {count}")


def _check_operator(r: _Reader, operator: int, where: str, opcodes: list[int], tensors: int, subgraphs: int) -> set[int]:
    """Check one operator; the subgraphs it runs."""
    opcode_index = r.scalar(operator, 0, "<I")
    if opcode_index >= len(opcodes):
        raise ModelInvalid(f"{where} names operator code {opcode_index}, but the model has {len(opcodes)}")
    for name, field in (("inputs", 1), ("outputs", 2), ("intermediates", 8)):
        _check_indexes(r.vector(operator, field, "i"), tensors, f"{where}'s {name}", optional=True)
    code = opcodes[opcode_index]
    if code not in SUBGRAPH_CALLS:
        return set()
    union, options, fields = SUBGRAPH_CALLS[code]
    table = r.target(operator, _UNION_FIELD[union] + 1)
    if r.scalar(operator, _UNION_FIELD[union], "<B") != _MEMBER_CODE[(union, options)]:
        table = None  # read as the schema defaults, as the runtime does
    called = set()
    for field in fields:
        if options == "StablehloCaseOptions":
            called |= set(r.vector(table, field, "i")) if table is not None else set()
        else:
            called.add(r.scalar(table, field, "<i") if table is not None else 0)
    for index in called:
        if not 0 <= index < subgraphs:
            raise ModelInvalid(f"{where} runs subgraph {index}, but the model has {subgraphs}")
    return called


def _check_no_cycle(calls: dict[int, set[int]]) -> None:
    """A subgraph that ends up running itself makes the runtime recurse until the stack overflows."""
    state: dict[int, int] = {}  # 1 = on the current path, 2 = done

    def visit(number: int, path: list[int]) -> None:
        state[number] = 1
        for called in sorted(calls.get(number, ())):
            if state.get(called) == 1:
                loop = " -> ".join(str(n) for n in path[path.index(called):] + [called])
                raise ModelInvalid(f"subgraphs call each other in a loop ({loop}): the runtime would recurse forever")
            if called not in state:
                visit(called, path + [called])
        state[number] = 2

    for number in sorted(calls):
        if number not in state:
            visit(number, [number])
