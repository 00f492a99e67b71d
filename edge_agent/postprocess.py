"""The decoders' historic home: the names that lived here, re-exported from `edge_agent.decode`."""

from edge_agent.decode.classification import classify
from edge_agent.decode.common import DecodeError, Quantization, dequantize, label_for
from edge_agent.decode.raw import RAW_FULL_VALUES_MAX, summarize_raw
from edge_agent.decode.ssd import SsdOutputOrder, decode_ssd, find_ssd_outputs, ssd_order_from_roles

__all__ = [
    "RAW_FULL_VALUES_MAX",
    "DecodeError",
    "Quantization",
    "SsdOutputOrder",
    "classify",
    "decode_ssd",
    "dequantize",
    "find_ssd_outputs",
    "label_for",
    "ssd_order_from_roles",
    "summarize_raw",
]
