"""Decoders: output arrays (and the model's description) in, plain results out. Pure numpy, plus OpenCV's NMS.

One decoder per output layout (classification, SSD post-processing, YOLO, ...), chosen once when
the model loads by `layouts.match_layout` and built by `factory.make_decoder`; never chosen per frame.
"""

from edge_agent.decode.classification import classify
from edge_agent.decode.common import DecodeError, Quantization, dequantize, label_for
from edge_agent.decode.description import ExportFacts, ModelDescription, TensorInfo
from edge_agent.decode.factory import ClassCountError, Decoder, make_decoder
from edge_agent.decode.layout_match import LayoutMatch
from edge_agent.decode.layouts import KNOWN_LAYOUTS, explain_layout, match_layout
from edge_agent.decode.options import BOX_UNITS, DecodeOptions
from edge_agent.decode.raw import RAW_FULL_VALUES_MAX, summarize_raw
from edge_agent.decode.ssd import SsdOutputOrder, decode_ssd, find_ssd_outputs, ssd_order_from_roles

__all__ = [
    "BOX_UNITS",
    "KNOWN_LAYOUTS",
    "RAW_FULL_VALUES_MAX",
    "ClassCountError",
    "DecodeError",
    "DecodeOptions",
    "Decoder",
    "ExportFacts",
    "LayoutMatch",
    "ModelDescription",
    "Quantization",
    "SsdOutputOrder",
    "TensorInfo",
    "classify",
    "decode_ssd",
    "dequantize",
    "explain_layout",
    "find_ssd_outputs",
    "label_for",
    "make_decoder",
    "match_layout",
    "ssd_order_from_roles",
    "summarize_raw",
]
