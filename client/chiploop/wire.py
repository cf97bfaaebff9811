"""The one codec between chiploop's objects and the wire messages, used by client and server.

Arrays travel packed (``Array``: raw little-endian bytes, a dtype string, a shape).
A plain dtype is numpy's string (``"<i2"``); a structured one is a JSON list of
``[name, dtype]`` pairs, packed (no padding). Decoding checks the dtype parses to a
numeric (or structured numeric) dtype and that ``len(data) == prod(shape) * itemsize``,
and refuses anything else with ``InvalidArgument`` naming the field; it copies the
bytes once, out of the message, and ``np.frombuffer`` views that copy, so decoded
arrays are READ-ONLY.

Field names in errors follow the request's structure without the message name,
e.g. ``layers[2].weights`` or ``readout.num_bins``, the same names
``chiploop.limits.validate`` uses.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from chiploop.errors import InvalidArgument
from chiploop.events import CHIP_EVENT_DTYPE, NUMERIC_KINDS
from chiploop.limits import UPDATE_KEYS, ChipLimits
from chiploop.run import Readout, RunResult
from chiploop.spec import InputLayer, Layer, NetworkSpec
from chiploop.v1 import chiploop_pb2 as pb

#: Bumped only with an incompatible change of chiploop.v1 (which would be chiploop.v2).
PROTOCOL_VERSION = 1

#: The chip service's full name ("chiploop.v1.Chip"): the daemon registers it, the client calls it.
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Chip"].full_name

_INT32 = (-(2**31), 2**31 - 1)

# The defaults go as UNSPECIFIED (0), which is what a daemon from before the UNSPECIFIED values
# reads as the default too; the explicit names of the defaults are read, never sent.
_RESET_TO_WIRE = {"subtract": pb.RESET_MODE_UNSPECIFIED, "zero": pb.RESET_MODE_ZERO}
_RESET_FROM_WIRE = {v: k for k, v in _RESET_TO_WIRE.items()} | {pb.RESET_MODE_SUBTRACT: "subtract"}
_MODE_TO_WIRE = {
    "depth_first": pb.RUN_MODE_UNSPECIFIED,
    "breadth_first": pb.RUN_MODE_ASYNC_BREADTH_FIRST,
    "sync": pb.RUN_MODE_SYNC,
}
_MODE_FROM_WIRE = {v: k for k, v in _MODE_TO_WIRE.items()} | {pb.RUN_MODE_ASYNC_DEPTH_FIRST: "depth_first"}


# ---------------------------------------------------------------- dtypes


def _little_endian(dtype: np.dtype) -> np.dtype:
    return dtype.newbyteorder("<") if dtype.byteorder in ">=" else dtype


def wire_dtype(dtype: np.dtype, field: str = "array") -> np.dtype:
    """The packed little-endian dtype an array of ``dtype`` travels as."""
    dtype = np.dtype(dtype)
    if dtype.names is None:
        if dtype.kind not in NUMERIC_KINDS or dtype.subdtype is not None or dtype.itemsize == 0:
            raise InvalidArgument(field, f"dtype {dtype} cannot travel: only bool, integer and float arrays can")
        return _little_endian(dtype)
    fields = []
    for name in dtype.names:
        sub = dtype.fields[name][0]
        if sub.names is not None or sub.kind not in NUMERIC_KINDS or sub.subdtype is not None:
            raise InvalidArgument(field, f"field {name!r} of dtype {dtype} cannot travel: only flat numeric fields can")
        fields.append((name, _little_endian(sub)))
    return np.dtype(fields)


def dtype_to_str(dtype: np.dtype) -> str:
    """The wire string of a dtype already in wire form (see ``wire_dtype``)."""
    if dtype.names is None:
        return dtype.str
    pairs = [[name, dtype.fields[name][0].str] for name in dtype.names]
    return json.dumps(pairs, separators=(",", ":"))


def _plain_dtype(text: object, field: str) -> np.dtype:
    if not isinstance(text, str) or not text:
        raise InvalidArgument(field, f"dtype must be a non-empty string, got {text!r}")
    try:
        dtype = np.dtype(text)
    except (TypeError, ValueError, SyntaxError):
        raise InvalidArgument(field, f"cannot parse dtype {text!r}") from None
    if dtype.names is not None or dtype.kind not in NUMERIC_KINDS or dtype.subdtype is not None:
        raise InvalidArgument(field, f"dtype {text!r} is not a bool, integer or float dtype")
    if dtype.byteorder == ">" or (dtype.byteorder == "=" and sys.byteorder == "big"):
        raise InvalidArgument(field, f"dtype {text!r} is big-endian; arrays travel little-endian")
    return dtype


def dtype_from_str(text: str, field: str = "array.dtype") -> np.dtype:
    """Parse a wire dtype string, refusing anything that is not (structured) numeric."""
    if not text.startswith("["):
        return _plain_dtype(text, field)
    try:
        pairs = json.loads(text)
    except ValueError:
        raise InvalidArgument(field, f"structured dtype is not valid JSON: {text[:80]!r}") from None
    if not isinstance(pairs, list) or not pairs:
        raise InvalidArgument(field, "structured dtype must be a non-empty list of [name, dtype] pairs")
    names = set()
    fields = []
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str) and pair[0]):
            raise InvalidArgument(field, f"structured dtype entry {pair!r} is not a [name, dtype] pair")
        if pair[0] in names:
            raise InvalidArgument(field, f"structured dtype names field {pair[0]!r} twice")
        names.add(pair[0])
        fields.append((pair[0], _plain_dtype(pair[1], field)))
    return np.dtype(fields)


def _describe(dtype: np.dtype) -> str:
    return dtype_to_str(wire_dtype(dtype)) if dtype.names is not None else str(dtype)


# ---------------------------------------------------------------- arrays


def encode_array(array: Any, into: pb.Array | None = None, field: str = "array") -> pb.Array:
    """Pack a numpy array (anything ``np.asarray`` takes) into an ``Array`` message."""
    arr = np.asarray(array)
    dtype = wire_dtype(arr.dtype, field)
    if arr.dtype != dtype:
        arr = arr.astype(dtype)
    msg = pb.Array() if into is None else into
    msg.dtype = dtype_to_str(dtype)
    msg.shape[:] = arr.shape
    msg.data = arr.tobytes()  # C order whatever the layout; one copy
    return msg


def decode_array(
    msg: pb.Array,
    field: str,
    dtype: np.dtype | None = None,
    ndim: int | None = None,
) -> np.ndarray:
    """Unpack an ``Array`` message (read-only; one copy of its bytes).

    dtype: when given, the array's dtype must equal it exactly ("wrong dtype" is an
    error, never a silent cast). ndim: when given, the number of dimensions it must have.
    """
    got = dtype_from_str(msg.dtype, f"{field}.dtype")
    if dtype is not None and got != dtype:
        raise InvalidArgument(field, f"dtype must be {_describe(np.dtype(dtype))}, got {_describe(got)}")
    shape = tuple(int(s) for s in msg.shape)
    if any(s < 0 for s in shape):
        raise InvalidArgument(f"{field}.shape", f"has a negative size: {shape}")
    if ndim is not None and len(shape) != ndim:
        raise InvalidArgument(field, f"must be {ndim}-D, got shape {shape}")
    count = math.prod(shape)
    data = msg.data  # one copy out of the message; the array views it
    if len(data) != count * got.itemsize:
        raise InvalidArgument(
            f"{field}.data",
            f"holds {len(data)} bytes, shape {shape} of {_describe(got)} needs {count * got.itemsize}",
        )
    try:
        return np.frombuffer(data, dtype=got, count=count).reshape(shape)
    except ValueError:
        # An empty array may claim any other sizes, past what numpy can index.
        raise InvalidArgument(f"{field}.shape", f"is too big for an array: {shape}") from None


def _decode_numeric(msg: pb.Array, field: str, ndim: int | None = None) -> np.ndarray:
    """A plain numeric array of any dtype (limits checks decide what the values may be)."""
    arr = decode_array(msg, field, ndim=ndim)
    if arr.dtype.names is not None:
        raise InvalidArgument(field, f"must be a plain numeric array, got a structured dtype {_describe(arr.dtype)}")
    return arr


def _check_int32(value: Any, field: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InvalidArgument(field, f"must be an integer, got {value!r}")
    if not _INT32[0] <= int(value) <= _INT32[1]:
        raise InvalidArgument(field, f"{value} does not fit in int32")
    return int(value)


# ---------------------------------------------------------------- network spec


def encode_network(spec: NetworkSpec, into: pb.Network | None = None) -> pb.Network:
    msg = pb.Network() if into is None else into
    inp = spec.input
    m = msg.input
    m.sensor_height, m.sensor_width = inp.sensor_size
    m.pool_y, m.pool_x = inp.pool
    m.has_crop = inp.crop is not None
    if inp.crop is not None:
        m.crop_y0, m.crop_y1, m.crop_x0, m.crop_x1 = inp.crop
    m.flip_x, m.flip_y, m.merge_polarities = inp.flip_x, inp.flip_y, inp.merge_polarities
    for i, layer in enumerate(spec.layers):
        lm = msg.layers.add()
        where = f"layers[{i}]"
        lm.name = layer.name
        encode_array(layer.weights, lm.weights, f"{where}.weights")
        lm.threshold_high = _check_int32(layer.threshold_high, f"{where}.threshold_high")
        lm.threshold_low = _check_int32(layer.threshold_low, f"{where}.threshold_low")
        if layer.reset not in _RESET_TO_WIRE:
            raise InvalidArgument(f"{where}.reset", f"must be 'subtract' or 'zero', got {layer.reset!r}")
        lm.reset = _RESET_TO_WIRE[layer.reset]
        lm.stride_y, lm.stride_x = layer.stride
        lm.padding_y, lm.padding_x = layer.padding
        lm.pool_y, lm.pool_x = layer.pool
        lm.destinations[:] = layer.destinations
        if layer.leak is not None:
            encode_array(layer.leak, lm.leak, f"{where}.leak")
        lm.leak_period_us = int(layer.leak_period_us)
    msg.monitor[:] = spec.monitor
    msg.hop_latency_us = int(spec.hop_latency_us)
    return msg


def decode_network(msg: pb.Network) -> NetworkSpec:
    """A NetworkSpec exactly as sent; ``chiploop.limits.validate`` judges it afterwards."""
    m = msg.input
    inp = InputLayer(
        sensor_size=(m.sensor_height, m.sensor_width),
        pool=(m.pool_y, m.pool_x),
        crop=(m.crop_y0, m.crop_y1, m.crop_x0, m.crop_x1) if m.has_crop else None,
        flip_x=m.flip_x,
        flip_y=m.flip_y,
        merge_polarities=m.merge_polarities,
    )
    layers = []
    for i, lm in enumerate(msg.layers):
        where = f"layers[{i}]"
        if not lm.HasField("weights"):
            raise InvalidArgument(f"{where}.weights", "missing")
        if lm.reset not in _RESET_FROM_WIRE:
            raise InvalidArgument(f"{where}.reset", f"unknown reset mode {lm.reset}")
        layers.append(
            Layer(
                weights=_decode_numeric(lm.weights, f"{where}.weights", ndim=4),
                threshold_high=lm.threshold_high,
                threshold_low=lm.threshold_low,
                reset=_RESET_FROM_WIRE[lm.reset],
                stride=(lm.stride_y, lm.stride_x),
                padding=(lm.padding_y, lm.padding_x),
                pool=(lm.pool_y, lm.pool_x),
                destinations=tuple(lm.destinations),
                leak=(
                    _decode_numeric(lm.leak, f"{where}.leak", ndim=1) if lm.HasField("leak") else None
                ),
                leak_period_us=lm.leak_period_us,
                name=lm.name,
            )
        )
    return NetworkSpec(
        layers=tuple(layers), input=inp, monitor=tuple(msg.monitor), hop_latency_us=msg.hop_latency_us
    )


# ---------------------------------------------------------------- weight updates


def normalize_updates(updates: Mapping[int, Any]) -> dict[int, dict[str, Any]]:
    """``{layer: weights}`` or ``{layer: {"weights": .., "leak": .., "threshold_high": ..}}`` -> the dict form."""
    if not isinstance(updates, Mapping):
        raise InvalidArgument("updates", f"must be a dict {{layer: weights or dict}}, got {type(updates).__name__}")
    out: dict[int, dict[str, Any]] = {}
    for layer, value in updates.items():
        if isinstance(layer, (bool, np.bool_)) or not isinstance(layer, (int, np.integer)):
            raise InvalidArgument("updates", f"layer keys must be integers, got {layer!r}")
        where = f"updates[{layer}]"
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - set(UPDATE_KEYS))
            if unknown:
                raise InvalidArgument(where, f"unknown field(s) {unknown}; allowed: {', '.join(UPDATE_KEYS)}")
            entry = {k: v for k, v in value.items() if v is not None}
        else:
            entry = {"weights": value}
        if not entry:
            raise InvalidArgument(where, "changes nothing")
        out[int(layer)] = entry
    return out


def encode_updates(updates: Mapping[int, Any], into: Any) -> None:
    """Fill a repeated LayerUpdate field (``request.updates``) from the client's update dict."""
    for layer, entry in normalize_updates(updates).items():
        where = f"updates[{layer}]"
        m = into.add()
        m.layer = _check_int32(layer, where)
        if "weights" in entry:
            encode_array(entry["weights"], m.weights, f"{where}.weights")
        if "leak" in entry:
            encode_array(entry["leak"], m.leak, f"{where}.leak")
        if "threshold_high" in entry:
            m.threshold_high = _check_int32(entry["threshold_high"], f"{where}.threshold_high")
        if "threshold_low" in entry:
            m.threshold_low = _check_int32(entry["threshold_low"], f"{where}.threshold_low")


def decode_updates(msgs: Iterable[pb.LayerUpdate]) -> dict[int, dict[str, Any]]:
    """``{layer: {key: value}}`` with only the keys present in each LayerUpdate."""
    out: dict[int, dict[str, Any]] = {}
    for j, m in enumerate(msgs):
        where = f"updates[{j}]"
        if m.layer in out:
            raise InvalidArgument(f"{where}.layer", f"layer {m.layer} is updated twice in one request")
        entry: dict[str, Any] = {}
        if m.HasField("weights"):
            entry["weights"] = _decode_numeric(m.weights, f"{where}.weights", ndim=4)
        if m.HasField("leak"):
            entry["leak"] = _decode_numeric(m.leak, f"{where}.leak", ndim=1)
        if m.HasField("threshold_high"):
            entry["threshold_high"] = m.threshold_high
        if m.HasField("threshold_low"):
            entry["threshold_low"] = m.threshold_low
        if not entry:
            raise InvalidArgument(where, f"changes nothing in layer {m.layer}")
        out[m.layer] = entry
    return out


# ---------------------------------------------------------------- readout and results


def encode_readout(readout: Readout, into: pb.Readout | None = None) -> pb.Readout:
    msg = pb.Readout() if into is None else into
    if readout.mode not in _MODE_TO_WIRE:
        raise InvalidArgument("readout.mode", f"must be one of {tuple(_MODE_TO_WIRE)}, got {readout.mode!r}")
    msg.t0_us = int(readout.t0_us)
    msg.bin_us = int(readout.bin_us)
    msg.num_bins = _check_int32(readout.num_bins, "readout.num_bins")
    msg.membrane_layers[:] = readout.membrane_layers
    msg.spatial_counts = bool(readout.spatial_counts)
    msg.mode = _MODE_TO_WIRE[readout.mode]
    return msg


def decode_readout(msg: pb.Readout, field: str = "readout") -> Readout:
    if msg.mode not in _MODE_FROM_WIRE:
        raise InvalidArgument(f"{field}.mode", f"unknown run mode {msg.mode}")
    return Readout(
        t0_us=msg.t0_us,
        bin_us=msg.bin_us,
        num_bins=msg.num_bins,
        membrane_layers=tuple(msg.membrane_layers),
        spatial_counts=msg.spatial_counts,
        mode=_MODE_FROM_WIRE[msg.mode],  # type: ignore[arg-type]
    )


def encode_layer_arrays(arrays: Mapping[int, np.ndarray], into: Any, field: str) -> None:
    for layer in sorted(arrays):
        m = into.add()
        m.layer = int(layer)
        encode_array(arrays[layer], m.values, f"{field}[{layer}]")


def decode_layer_arrays(msgs: Iterable[pb.LayerArray], field: str, dtype: np.dtype) -> dict[int, np.ndarray]:
    out = {}
    for m in msgs:
        if m.layer in out:
            raise InvalidArgument(f"{field}[{m.layer}]", "layer given twice")
        out[m.layer] = decode_array(m.values, f"{field}[{m.layer}]", dtype=dtype)
    return out


def encode_run_request(template: pb.RunRequest, events: np.ndarray, offsets: np.ndarray) -> bytes:
    """The wire bytes of ``template`` (model id, readout) with ``events`` and ``offsets``: what
    ``RunRequest.SerializeToString`` would give, fields in another order, but with the events'
    bytes copied once. Through protobuf they are copied three times (``tobytes``, into the
    message, out of it): 4 MiB uploads ran at 267-302 MB/s that way and 310-364 this way."""
    events = np.asarray(events)
    head = pb.RunRequest()
    head.CopyFrom(template)
    head.ClearField("events")
    encode_array(offsets, head.offsets, "offsets")
    dtype = wire_dtype(events.dtype, "events")
    data = np.ascontiguousarray(events, dtype=dtype).reshape(-1).view(np.uint8)
    array_head = pb.Array(dtype=dtype_to_str(dtype), shape=events.shape).SerializeToString()
    array_bytes = len(array_head) + (field_bytes(data.nbytes) if data.nbytes else 0)
    parts: list[Any] = [head.SerializeToString(), _RUN_EVENTS_TAG, _varint(array_bytes), array_head]
    if data.nbytes:  # proto3 leaves empty bytes out, as SerializeToString does
        parts += [_ARRAY_DATA_TAG, _varint(data.nbytes), data]
    return b"".join(parts)


def field_bytes(size: int) -> int:
    """The encoded size of a length-delimited field numbered under 16 holding ``size`` bytes:
    its one-byte key, its length as a varint, the bytes."""
    return 1 + len(_varint(size)) + size


def _tag(message: Any, field: str) -> bytes:
    """The key of a length-delimited field (wire type 2)."""
    return _varint(message.DESCRIPTOR.fields_by_name[field].number << 3 | 2)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_RUN_EVENTS_TAG = _tag(pb.RunRequest, "events")
_ARRAY_DATA_TAG = _tag(pb.Array, "data")


def encode_run_result(result: RunResult, model_id: str = "", into: pb.RunResponse | None = None) -> pb.RunResponse:
    msg = pb.RunResponse() if into is None else into
    msg.model_id = model_id
    encode_array(result.output_events, msg.output_events, "output_events")
    encode_array(np.asarray(result.output_offsets, np.int64), msg.output_offsets, "output_offsets")
    encode_layer_arrays(result.counts, msg.counts, "counts")
    encode_layer_arrays(result.membranes, msg.membranes, "membranes")
    encode_array(np.asarray(result.counters, np.int64), msg.counters, "counters")
    msg.compute_seconds = float(result.compute_seconds)
    return msg


def decode_run_result(msg: pb.RunResponse, writable: bool = False) -> RunResult:
    """The RunResult of a RunResponse; ``writable`` copies the arrays out of the message
    (what the client hands to callers, like the in-process simulator's own arrays)."""
    own = np.array if writable else (lambda a: a)
    return RunResult(
        output_events=own(decode_array(msg.output_events, "output_events", dtype=CHIP_EVENT_DTYPE, ndim=1)),
        output_offsets=own(decode_array(msg.output_offsets, "output_offsets", dtype=np.dtype("<i8"), ndim=1)),
        counts={k: own(v) for k, v in decode_layer_arrays(msg.counts, "counts", np.dtype("<i4")).items()},
        membranes={k: own(v) for k, v in decode_layer_arrays(msg.membranes, "membranes", np.dtype("<i2")).items()},
        counters=own(decode_array(msg.counters, "counters", dtype=np.dtype("<i8"), ndim=2)),
        compute_seconds=msg.compute_seconds,
    )


# ---------------------------------------------------------------- chip limits

_LIMIT_TUPLES = ("strides", "pools", "kernel_memory", "neuron_memory")


def encode_limits(limits: ChipLimits, into: pb.ChipLimits | None = None) -> pb.ChipLimits:
    msg = pb.ChipLimits() if into is None else into
    for name, value in limits.as_dict().items():
        if name in _LIMIT_TUPLES:
            getattr(msg, name)[:] = value
        else:
            setattr(msg, name, value)
    return msg


def decode_limits(msg: pb.ChipLimits) -> ChipLimits:
    values = {}
    for name in ChipLimits.__dataclass_fields__:
        value = getattr(msg, name)
        values[name] = tuple(value) if name in _LIMIT_TUPLES else value
    return ChipLimits(**values)


# ---------------------------------------------------------------- allocator


_MALLOC_TUNED = False


def tune_malloc(threshold_bytes: int = 64 << 20) -> bool:
    """Keep large freed buffers in glibc's heap instead of unmapping them after each message.

    With glibc's defaults every multi-MB message buffer is a fresh mmap whose pages
    fault in again: packing + unpacking 300k events took 15 ms that way and 1 ms with
    the thresholds raised (measured here). Does what ``MALLOC_TRIM_THRESHOLD_`` and
    ``MALLOC_MMAP_THRESHOLD_`` do, at run time; leaves a process alone whose
    environment already sets either, and anything that is not glibc. Returns whether
    it changed anything. ``CHIPLOOP_TUNE_MALLOC=0`` turns it off.
    """
    global _MALLOC_TUNED
    import os

    if _MALLOC_TUNED or os.environ.get("CHIPLOOP_TUNE_MALLOC", "1") == "0":
        return False
    if "MALLOC_TRIM_THRESHOLD_" in os.environ or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # musl and friends: nothing to tune
    m_trim_threshold, m_mmap_threshold = -1, -3
    trimmed = mallopt(m_trim_threshold, threshold_bytes)
    mapped = mallopt(m_mmap_threshold, threshold_bytes)
    _MALLOC_TUNED = bool(trimmed and mapped)
    return _MALLOC_TUNED
