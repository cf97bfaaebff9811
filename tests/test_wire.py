"""The codec: round trips of every object, and every malformed Array refused naming its field."""

from __future__ import annotations

import json

import numpy as np
import pytest
from chiploop import wire
from chiploop.architectures import NMNIST_PAPER
from chiploop.errors import InvalidArgument
from chiploop.events import (
    CHIP_EVENT_DTYPE,
    DVS_EVENT_DTYPE,
    KeptEvents,
    concatenate_events,
    make_dvs_events,
    take_events,
)
from chiploop.limits import SPECK, ChipLimits
from chiploop.run import Readout, RunResult
from chiploop.spec import InputLayer, Layer, NetworkSpec
from chiploop.v1 import chiploop_pb2 as pb
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

PLAIN_DTYPES = st.sampled_from(["<i1", "<u1", "<i2", "<u2", "<i4", "<i8", "<f4", "<f8", "|b1", ">i4", ">f8"])


def roundtrip_array(arr: np.ndarray, **checks) -> np.ndarray:
    msg = pb.Array.FromString(wire.encode_array(arr).SerializeToString())
    return wire.decode_array(msg, "a", **checks)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(PLAIN_DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)))
def test_plain_arrays_roundtrip(arr):
    out = roundtrip_array(arr)
    assert out.shape == arr.shape
    assert out.dtype == arr.dtype.newbyteorder("<") or out.dtype == arr.dtype
    np.testing.assert_array_equal(out, arr)


def test_non_contiguous_and_big_endian_arrays_travel_as_little_endian_c_order():
    arr = np.arange(24, dtype=">i4").reshape(4, 6)[:, ::2].T
    out = roundtrip_array(arr)
    assert out.dtype.str == "<i4"
    np.testing.assert_array_equal(out, arr)


def test_structured_events_roundtrip_zero_copy_and_read_only():
    events = make_dvs_events([1, 33, 0], [2, 0, 33], [1, 0, 1], [0, 5, 5])
    msg = wire.encode_array(events)
    assert json.loads(msg.dtype) == [["x", "<u2"], ["y", "<u2"], ["p", "|u1"], ["t", "<i8"]]
    out = wire.decode_array(msg, "events", dtype=DVS_EVENT_DTYPE, ndim=1)
    np.testing.assert_array_equal(out, events)
    assert not out.flags.writeable  # a view over the message's bytes, not a copy
    assert out.base is not None


def test_padded_structured_dtype_is_packed_on_the_wire():
    padded = np.dtype({"names": ["x", "t"], "formats": ["<u2", "<i8"], "offsets": [0, 8], "itemsize": 16})
    arr = np.zeros(3, padded)
    arr["x"], arr["t"] = [1, 2, 3], [7, 8, 9]
    out = roundtrip_array(arr)
    assert out.dtype.itemsize == 10
    np.testing.assert_array_equal(out["t"], [7, 8, 9])


def test_wrong_event_dtype_is_refused_naming_the_field():
    events = np.zeros(3, [("x", "<u2"), ("y", "<u2"), ("p", "u1"), ("t", "<i4")])  # t too narrow
    with pytest.raises(InvalidArgument, match=r"^events: dtype must be") as err:
        wire.decode_array(wire.encode_array(events), "events", dtype=DVS_EVENT_DTYPE)
    assert err.value.field == "events"
    with pytest.raises(InvalidArgument, match="events: dtype must be"):
        wire.decode_array(wire.encode_array(np.zeros(3, np.int64)), "events", dtype=DVS_EVENT_DTYPE)


@pytest.mark.parametrize(
    ("dtype", "shape", "data", "field", "match"),
    [
        ("<i2", [3], b"\x00" * 5, "a.data", "holds 5 bytes"),
        ("<i2", [-1], b"", "a.shape", "negative"),
        ("", [0], b"", "a.dtype", "non-empty"),
        ("nonsense", [0], b"", "a.dtype", "cannot parse"),
        ("O", [1], b"\x00" * 8, "a.dtype", "not a bool, integer or float"),
        ("U4", [1], b"\x00" * 16, "a.dtype", "not a bool, integer or float"),
        ("(2,)i4", [1], b"\x00" * 8, "a.dtype", "not a bool, integer or float"),
        (">i4", [1], b"\x00" * 4, "a.dtype", "big-endian"),
        ("[", [1], b"", "a.dtype", "not valid JSON"),
        ("[]", [1], b"", "a.dtype", "non-empty list"),
        ('[["x"]]', [1], b"", "a.dtype", "not a \\[name, dtype\\] pair"),
        ('[["x","<i2"],["x","<i2"]]', [1], b"", "a.dtype", "twice"),
        ('[["x","O"]]', [1], b"", "a.dtype", "not a bool"),
        ("<i1", [0, 2**62, 2**62, 2**62], b"", "a.shape", "too big for an array"),
    ],
)
def test_malformed_arrays_are_refused_naming_the_field(dtype, shape, data, field, match):
    msg = pb.Array(dtype=dtype, shape=shape, data=data)
    with pytest.raises(InvalidArgument, match=match) as err:
        wire.decode_array(msg, "a")
    assert err.value.field == field


def test_wrong_ndim_is_refused():
    with pytest.raises(InvalidArgument, match=r"a: must be 1-D, got shape \(2, 2\)"):
        roundtrip_array(np.zeros((2, 2), np.int64), ndim=1)


def test_object_and_string_arrays_cannot_be_encoded():
    for bad in (np.array([object()]), np.array(["abc"])):
        with pytest.raises(InvalidArgument, match="cannot travel"):
            wire.encode_array(bad)


def paper_spec(seed: int = 0, **kwargs) -> NetworkSpec:
    rng = np.random.default_rng(seed)
    weights = [
        rng.integers(-20, 20, size=(out[0], inp[0], s.kernel, s.kernel), dtype=np.int8)
        for s, (inp, out) in zip(NMNIST_PAPER.stages, NMNIST_PAPER.layer_shapes(), strict=True)
    ]
    return NMNIST_PAPER.spec(weights, [40] * len(weights), **kwargs)


def test_network_roundtrip_keeps_the_content_hash():
    spec = paper_spec(leaks=[np.arange(16, dtype=np.int16)] + [None] * 5, leak_period_us=1000, monitor=(2,))
    spec = NetworkSpec(
        layers=spec.layers,
        input=InputLayer(sensor_size=(34, 34), pool=(1, 2), crop=(1, 30, 0, 17), flip_x=True),
        monitor=spec.monitor,
        hop_latency_us=3,
    )
    spec = spec.with_layer(1, reset="zero", threshold_low=-100, name="second")
    msg = pb.Network.FromString(wire.encode_network(spec).SerializeToString())
    back = wire.decode_network(msg)
    assert back.content_hash() == spec.content_hash()
    assert back.input == spec.input
    assert back.layers[1].reset == "zero" and back.layers[1].name == "second"
    assert back.layers[1].threshold_low == -100
    np.testing.assert_array_equal(back.layers[0].leak, np.arange(16))
    assert back.layers[0].leak_period_us == 1000 and back.layers[1].leak is None
    assert back.layers[0].destinations == (1,) and back.layers[5].destinations == ()


def test_float_weights_travel_so_that_the_server_can_say_what_is_wrong():
    spec = paper_spec()
    bad = spec.with_layer(2, weights=np.full(spec.layers[2].weights.shape, np.nan, np.float32))
    back = wire.decode_network(wire.encode_network(bad))
    assert back.layers[2].weights.dtype == np.float32


def test_network_with_wrong_weight_rank_is_refused_naming_the_layer():
    msg = wire.encode_network(paper_spec())
    wire.encode_array(np.zeros((2, 2), np.int8), msg.layers[3].weights)
    with pytest.raises(InvalidArgument, match=r"^layers\[3\]\.weights: must be 4-D"):
        wire.decode_network(msg)
    msg.layers[3].ClearField("weights")
    with pytest.raises(InvalidArgument, match=r"layers\[3\]\.weights: missing"):
        wire.decode_network(msg)


def test_updates_roundtrip_only_what_is_given():
    w = np.ones((10, 64, 4, 4), np.int8)
    req = pb.UpdateWeightsRequest(model_id="m")
    wire.encode_updates({5: w, 0: {"threshold_high": 7, "leak": np.arange(16, dtype=np.int16)}}, req.updates)
    back = wire.decode_updates(pb.UpdateWeightsRequest.FromString(req.SerializeToString()).updates)
    assert set(back) == {0, 5}
    np.testing.assert_array_equal(back[5]["weights"], w)
    assert set(back[5]) == {"weights"}
    assert back[0]["threshold_high"] == 7 and "threshold_low" not in back[0]
    np.testing.assert_array_equal(back[0]["leak"], np.arange(16))


@pytest.mark.parametrize(
    ("updates", "match"),
    [
        ({1: {"weight": 1}}, r"updates\[1\]: unknown field"),
        ({1: {}}, r"updates\[1\]: changes nothing"),
        ({"a": np.zeros(1)}, "layer keys must be integers"),
        ({1: {"threshold_high": 1.5}}, r"updates\[1\]\.threshold_high: must be an integer"),
        ({1: {"threshold_high": 2**40}}, "does not fit in int32"),
        ([1, 2], "must be a dict"),
    ],
)
def test_bad_updates_are_refused_client_side(updates, match):
    with pytest.raises(InvalidArgument, match=match):
        wire.encode_updates(updates, pb.UpdateWeightsRequest().updates)


def test_duplicate_layer_in_an_update_request_is_refused():
    req = pb.UpdateWeightsRequest()
    req.updates.add(layer=2, threshold_high=3)
    req.updates.add(layer=2, threshold_high=4)
    with pytest.raises(InvalidArgument, match=r"updates\[1\]\.layer: layer 2 is updated twice"):
        wire.decode_updates(req.updates)


@pytest.mark.parametrize("mode", ["depth_first", "breadth_first", "sync"])
def test_readout_roundtrip(mode):
    readout = Readout(t0_us=5, bin_us=1000, num_bins=30, membrane_layers=(1, 5), spatial_counts=True, mode=mode)
    assert wire.decode_readout(pb.Readout.FromString(wire.encode_readout(readout).SerializeToString())) == readout


def test_unknown_run_mode_is_refused():
    msg = pb.Readout()
    msg.ParseFromString(b"\x30\x07")  # field 6 (mode) = 7, unknown to this version
    with pytest.raises(InvalidArgument, match="readout.mode: unknown run mode 7"):
        wire.decode_readout(msg)


@pytest.mark.parametrize("n", [0, 1, 9, 100_000])
def test_a_run_request_encoded_with_its_events_copied_once_parses_as_protobufs_own(n):
    rng = np.random.default_rng(n)
    events = make_dvs_events(rng.integers(0, 34, n), rng.integers(0, 34, n), rng.integers(0, 2, n), np.arange(n))
    offsets = np.array([0, n // 3, n], np.int64)
    template = pb.RunRequest(model_id="abc")
    wire.encode_readout(Readout(bin_us=10, num_bins=3, membrane_layers=(1,)), template.readout)
    expected = pb.RunRequest()
    expected.CopyFrom(template)
    wire.encode_array(events, expected.events)
    wire.encode_array(offsets, expected.offsets)
    assert pb.RunRequest.FromString(wire.encode_run_request(template, events, offsets)) == expected
    plain = pb.RunRequest()  # anything np.asarray takes, as encode_array
    plain.CopyFrom(template)
    wire.encode_array([], plain.events)
    wire.encode_array(offsets[:1], plain.offsets)
    assert pb.RunRequest.FromString(wire.encode_run_request(template, [], offsets[:1])) == plain
    strided = pb.RunRequest.FromString(wire.encode_run_request(template, events[::2], offsets[:1]))
    np.testing.assert_array_equal(wire.decode_array(strided.events, "events", DVS_EVENT_DTYPE, 1), events[::2])


def test_unset_enums_read_as_the_defaults_and_older_peers_numbers_keep_their_meaning():
    # Before the UNSPECIFIED values: depth-first and subtract were 0, breadth-first 1, sync 2, zero 1.
    for number, mode in ((0, "depth_first"), (1, "breadth_first"), (2, "sync"), (3, "depth_first")):
        assert wire.decode_readout(pb.Readout(num_bins=1, mode=number)).mode == mode
    layer = wire.encode_network(paper_spec()).layers[0]
    for number, reset in ((0, "subtract"), (1, "zero"), (2, "subtract")):
        network = wire.encode_network(paper_spec())
        network.layers[0].reset = number
        assert wire.decode_network(network).layers[0].reset == reset
    assert layer.reset == pb.RESET_MODE_UNSPECIFIED  # the default goes as 0: older daemons read it alike


def make_result(n: int = 3, writable_check: bool = False) -> RunResult:
    rng = np.random.default_rng(1)
    events = np.zeros(7, CHIP_EVENT_DTYPE)
    events["k"] = rng.integers(0, 10, 7)
    events["t"] = np.arange(7)
    return RunResult(
        output_events=events,
        output_offsets=np.array([0, 2, 2, 7][: n + 1], np.int64),
        counts={5: rng.integers(0, 9, (n, 4, 10)).astype(np.int32)},
        membranes={1: rng.integers(-99, 99, (n, 4, 2, 3, 3)).astype(np.int16)},
        counters=rng.integers(0, 99, (n, 10)).astype(np.int64),
        compute_seconds=0.25,
    )


@pytest.mark.parametrize("writable", [False, True])
def test_run_result_roundtrip(writable):
    result = make_result()
    msg = pb.RunResponse.FromString(wire.encode_run_result(result, "abc").SerializeToString())
    assert msg.model_id == "abc"
    back = wire.decode_run_result(msg, writable=writable)
    np.testing.assert_array_equal(back.output_events, result.output_events)
    np.testing.assert_array_equal(back.output_offsets, result.output_offsets)
    np.testing.assert_array_equal(back.counts[5], result.counts[5])
    np.testing.assert_array_equal(back.membranes[1], result.membranes[1])
    np.testing.assert_array_equal(back.counters, result.counters)
    assert back.compute_seconds == 0.25
    assert back.counts[5].flags.writeable == writable
    assert back.output_events.flags.writeable == writable


def test_run_response_with_wrong_count_dtype_is_refused():
    result = make_result()
    result.counts[5] = result.counts[5].astype(np.int64)
    with pytest.raises(InvalidArgument, match=r"counts\[5\]: dtype must be int32"):
        wire.decode_run_result(wire.encode_run_result(result))


def test_limits_roundtrip():
    assert wire.decode_limits(wire.encode_limits(SPECK)) == SPECK
    other = ChipLimits(chip_model="x", cores=3, strides=(1,), kernel_memory=(1, 2, 3), neuron_memory=(4, 5, 6))
    assert wire.decode_limits(pb.ChipLimits.FromString(wire.encode_limits(other).SerializeToString())) == other


def test_layer_dataclass_roundtrip_of_a_single_layer_network():
    layer = Layer(weights=np.ones((2, 2, 3, 3), np.int8), threshold_high=5, stride=(2, 1), padding=(1, 0), pool=(4, 2))
    spec = NetworkSpec(layers=(layer,), input=InputLayer(sensor_size=(20, 30)))
    back = wire.decode_network(wire.encode_network(spec)).layers[0]
    assert (back.stride, back.padding, back.pool) == ((2, 1), (1, 0), (4, 2))


def test_events_survive_a_full_request_roundtrip():
    events = make_dvs_events(np.arange(5), np.arange(5), [0, 1, 0, 1, 0], np.arange(5) * 10)
    req = pb.RunRequest(model_id="m")
    wire.encode_array(events, req.events)
    got = wire.decode_array(pb.RunRequest.FromString(req.SerializeToString()).events, "events", DVS_EVENT_DTYPE, 1)
    np.testing.assert_array_equal(got, events)


# ---------------------------------------------------------------- event copies


def test_event_copies_as_bytes_equal_numpys_field_by_field_copies():
    rng = np.random.default_rng(0)
    n = 1000
    events = make_dvs_events(rng.integers(0, 34, n), rng.integers(0, 34, n), rng.integers(0, 2, n), rng.integers(0, 10**12, n))
    parts = [events[:10], events[10:10], events[::-3], events[500:]]  # empty and strided parts too
    joined = concatenate_events(parts)
    assert joined.dtype == DVS_EVENT_DTYPE and joined.flags.writeable
    assert np.array_equal(joined, np.concatenate(parts))
    mask = events["t"] % 3 == 0
    order = np.argsort(events["t"], kind="stable")
    assert np.array_equal(take_events(events, mask), events[mask])
    assert np.array_equal(take_events(events[::2], order[:400] // 2), events[::2][order[:400] // 2])
    chip = np.zeros(5, CHIP_EVENT_DTYPE)
    chip["t"] = np.arange(5)
    assert np.array_equal(concatenate_events([chip, chip[::-1]]), np.concatenate([chip, chip[::-1]]))
    copied = concatenate_events([events])
    copied["x"] = 0
    assert events["x"].any()  # a copy, never a view


def _chip_chunk(start: int, size: int) -> np.ndarray:
    chunk = np.zeros(size, CHIP_EVENT_DTYPE)
    chunk["t"] = np.arange(start, start + size)  # an event's time is its number
    return chunk


def test_a_sessions_chunks_are_read_in_slices_joined_once():
    kept = KeptEvents()
    for start, size in ((0, 0), (0, 3), (3, 3)):
        kept.append(_chip_chunk(start, size))
    whole = _chip_chunk(0, 6)
    assert np.array_equal(kept.read(2, 5), whole[2:5]) and len(kept._chunks) == 1  # joined in place
    page = kept.read()
    page["t"] = -1
    assert np.array_equal(kept.read(), whole)  # pages are copies
    assert kept.read(9).size == 0 and kept.read(4, 2).size == 0
    assert KeptEvents().read().dtype == CHIP_EVENT_DTYPE and KeptEvents().read().size == 0


@settings(max_examples=200, deadline=None)
@given(
    limit=st.none() | st.integers(0, 12),
    steps=st.lists(st.tuples(st.integers(0, 9), st.booleans()), max_size=12),
)
def test_kept_events_keep_the_newest_limit_numbered_since_open(limit, steps):
    kept, total = KeptEvents(limit), 0
    for size, read in steps:
        kept.append(_chip_chunk(total, size))
        total += size
        first = total - limit if limit is not None and total > limit else 0
        assert (kept.total, kept.first, len(kept)) == (total, first, total - first)
        if read:  # joining and trimming interleave in any order
            assert np.array_equal(kept.read()["t"], np.arange(first, total))
            assert np.array_equal(kept.read(first + 1, total - 1)["t"], np.arange(first + 1, total - 1))
    if kept.first:
        with pytest.raises(InvalidArgument, match=f"events before {kept.first} are no longer kept"):
            kept.read(kept.first - 1)
    kept.clear()
    assert (kept.total, kept.first, kept.read().size) == (0, 0, 0)


def test_kept_events_hold_about_twice_their_limit_however_large_a_chunk():
    def held_bytes(kept: KeptEvents) -> int:  # the memory behind the chunks, each owner once
        owners = {id(c.base if isinstance(c.base, np.ndarray) else c): c for c in kept._chunks}
        return sum((c.base if isinstance(c.base, np.ndarray) else c).nbytes for c in owners.values())

    kept, item = KeptEvents(10), CHIP_EVENT_DTYPE.itemsize
    kept.append(_chip_chunk(0, 100_000))  # one chunk far past the limit: its tail is copied out
    assert held_bytes(kept) <= 2 * 10 * item and np.array_equal(kept.read()["t"], np.arange(99_990, 100_000))
    kept, total = KeptEvents(1000), 0
    for size in (700, 900, 50, 3000, 1, 1, 999, 400):
        kept.append(_chip_chunk(total, size))
        total += size
        if size == 50:
            kept.read()  # joins the chunks: one owner, then trimmed a little at a time
        assert held_bytes(kept) <= 2 * 1000 * item


def test_kept_events_refuse_a_negative_or_fractional_limit():
    for bad in (-1, 1.5, True):
        with pytest.raises(InvalidArgument, match="limit"):
            KeptEvents(bad)


def test_dvs_events_are_built_from_integers_their_fields_hold_never_cast():
    events = make_dvs_events(np.array([1.0, 2.0]), [3, 4], [True, False], np.array([5, 6], np.uint32))
    assert events.tolist() == [(1, 3, 1, 5), (2, 4, 0, 6)]
    for args, match in (
        (([65541], [0], [0], [0]), r"x\[0\]: 65541 is not an integer in 0..65535 \(uint16\)"),
        (([1], [0], [-1], [0]), r"p\[0\]: -1 is not an integer in 0..255"),
        (([1, 2], [0, 0], [0, 0], [0.0, 0.25]), r"t\[1\]: 0.25 is not an integer"),  # seconds, not us
        (([1], [0], [0], [float("nan")]), r"t\[0\]: nan"),
        (([1, 2], [0], [0, 0], [0, 1]), r"y: x, y, p and t must be one-dimensional, of one length; y has shape \(1,\)"),
        (([1], ["a"], [0], [0]), r"y: must be integers"),
        (([1], [0], [0], np.array([2.0**63])), r"t\[0\]: 9.223372036854776e\+18 is not an integer"),  # past int64
        ((1, 0, 0, 0), r"x: x, y, p and t must be one-dimensional"),
    ):
        with pytest.raises(InvalidArgument, match=match):
            make_dvs_events(*args)


def test_event_copies_refuse_mixed_dtypes_instead_of_reading_one_as_the_other():
    with pytest.raises(TypeError, match="dtype"):
        concatenate_events([np.zeros(2, DVS_EVENT_DTYPE), np.zeros(2, np.dtype([("a", "V13")]))])
    with pytest.raises(ValueError, match="at least one"):
        concatenate_events([])
