"""The fast simulator equals the pure-Python reference, bit for bit, on random small networks.

Random networks cover: mixed-sign and extreme weights, saturation (huge leaks,
threshold 32767), both reset modes, threshold_low, stride/padding edges, input
and layer pooling (with the floor pooling's cut-off rows), branches and a
diamond with both destination orders, leak ticks, crop/flip/merge, hop latency,
counts (plain and spatial), snapshots, counters, and all three modes.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from chiploop.events import make_dvs_events
from chiploop.run import Readout, pack_samples
from chiploop.spec import InputLayer, Layer, NetworkSpec
from chiploop_server.sim import SimNetwork, run_batch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sim_reference import reference_run

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def input_layers(draw) -> InputLayer:
    sensor = (draw(st.integers(2, 7)), draw(st.integers(2, 7)))
    pool = (draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2])))
    ph, pw = -(-sensor[0] // pool[0]), -(-sensor[1] // pool[1])
    crop = None
    if draw(st.booleans()):
        y0 = draw(st.integers(0, ph - 1))
        x0 = draw(st.integers(0, pw - 1))
        crop = (y0, draw(st.integers(y0 + 1, ph)), x0, draw(st.integers(x0 + 1, pw)))
    return InputLayer(
        sensor_size=sensor,
        pool=pool,
        crop=crop,
        flip_x=draw(st.booleans()),
        flip_y=draw(st.booleans()),
        merge_polarities=draw(st.booleans()),
    )


@st.composite
def dynamics(draw, f: int, rng: np.random.Generator) -> dict:
    """Thresholds, reset, leak of one layer."""
    thr = draw(st.one_of(st.integers(1, 40), st.sampled_from([1, 2, 127, 300, 32767])))
    low = draw(st.one_of(st.just(-32768), st.integers(-60, thr - 1)))
    out = {"threshold_high": thr, "threshold_low": low, "reset": draw(st.sampled_from(["subtract", "zero"]))}
    if draw(st.integers(0, 3)) == 0:
        scale = draw(st.sampled_from([5, 40, 32767]))
        out["leak"] = rng.integers(-scale, scale + 1, f).astype(np.int16)
        out["leak_period_us"] = draw(st.integers(1, 40))
    return out


def random_weights(rng: np.random.Generator, shape, style: int) -> np.ndarray:
    if style == 0:
        return rng.integers(-8, 12, shape).astype(np.int8)
    if style == 1:
        return rng.integers(-128, 128, shape).astype(np.int8)
    return rng.choice(np.array([-128, -1, 0, 1, 127], np.int8), shape)


@st.composite
def conv_layer(draw, in_shape, rng, same_shape: bool = False, **fixed) -> Layer:
    c, h, w = in_shape
    if same_shape:  # keeps (c, h, w): a diamond's side path
        k = draw(st.sampled_from([1, 3]))
        kernel, stride, padding, pool, f = (k, k), (1, 1), (k // 2, k // 2), (1, 1), c
    else:
        padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
        kernel = (draw(st.integers(1, min(4, h + 2 * padding[0]))), draw(st.integers(1, min(4, w + 2 * padding[1]))))
        stride = (draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2])))
        pool = (draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2])))
        f = draw(st.integers(1, 3))
    weights = random_weights(rng, (f, c, *kernel), draw(st.integers(0, 2)))
    return Layer(weights=weights, stride=stride, padding=padding, pool=pool, **draw(dynamics(f, rng)), **fixed)


def pooled(layer: Layer, in_shape):
    oh, ow = layer.conv_out_size(in_shape[1:])
    return (layer.out_channels, oh // layer.pool[0], ow // layer.pool[1])


@st.composite
def networks(draw) -> NetworkSpec:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    inp = draw(input_layers())
    shape = inp.out_shape
    topology = draw(st.sampled_from(["chain", "chain", "branch", "diamond"]))
    layers: list[Layer] = []
    if topology == "chain":
        n = draw(st.integers(1, 3))
        for i in range(n):
            dest = (i + 1,) if i + 1 < n else ()
            layer = draw(conv_layer(shape, rng, destinations=dest))
            if dest and min(pooled(layer, shape)[1:]) < 1:
                layer = replace(layer, pool=(1, 1))
            layers.append(layer)
            shape = pooled(layer, shape)
    else:
        order = draw(st.sampled_from([(1, 2), (2, 1)]))
        first = draw(conv_layer(shape, rng, destinations=order))
        if min(pooled(first, shape)[1:]) < 1:
            first = replace(first, pool=(1, 1))
        shape = pooled(first, shape)
        if topology == "branch":
            layers = [first, draw(conv_layer(shape, rng)), draw(conv_layer(shape, rng))]
        else:
            layers = [first, draw(conv_layer(shape, rng, same_shape=True, destinations=(2,))), draw(conv_layer(shape, rng))]
    n = len(layers)
    monitor = tuple(i for i in range(n) if draw(st.booleans()))
    return NetworkSpec(layers=tuple(layers), input=inp, monitor=monitor, hop_latency_us=draw(st.sampled_from([0, 0, 1, 3])))


@st.composite
def samples(draw, inp: InputLayer) -> np.ndarray:
    n = draw(st.integers(0, 30))
    h, w = inp.sensor_size
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    t_max = draw(st.sampled_from([5, 60, 150]))
    return make_dvs_events(
        rng.integers(0, w, n), rng.integers(0, h, n), rng.integers(0, 2, n), np.sort(rng.integers(0, t_max + 1, n))
    )


@st.composite
def readouts(draw, n_layers: int, mode: str) -> Readout:
    return Readout(
        t0_us=draw(st.integers(0, 30)),
        bin_us=draw(st.integers(1, 50)),
        num_bins=draw(st.integers(1, 5)),
        membrane_layers=tuple(i for i in range(n_layers) if draw(st.booleans())),
        spatial_counts=draw(st.booleans()),
        mode=mode,
    )


def assert_matches_reference(spec: NetworkSpec, events_list: list[np.ndarray], readout: Readout) -> None:
    net = SimNetwork.from_spec(spec)
    events, offsets = pack_samples(events_list)
    result = run_batch(net, events, offsets, readout)
    for i, sample in enumerate(events_list):
        ref = reference_run(spec, sample, readout)
        got = [tuple(int(v) for v in e) for e in result.sample_events(i)]
        assert got == ref["output_events"], f"sample {i}: output events differ"
        assert result.counters[i].tolist() == ref["counters"], f"sample {i}: counters differ"
        for layer, counts in ref["counts"].items():
            want = counts if readout.spatial_counts else counts.sum(axis=(2, 3))
            np.testing.assert_array_equal(result.counts[layer][i], want, err_msg=f"sample {i} counts of layer {layer}")
        assert set(result.counts) == set(ref["counts"])
        for layer, states in ref["membranes"].items():
            np.testing.assert_array_equal(result.membranes[layer][i], states, err_msg=f"sample {i} layer {layer}")


@SETTINGS
@given(data=st.data())
def test_depth_first_matches_reference(data):
    spec = data.draw(networks())
    events = [data.draw(samples(spec.input)) for _ in range(data.draw(st.integers(1, 2)))]
    assert_matches_reference(spec, events, data.draw(readouts(len(spec.layers), "depth_first")))


@SETTINGS
@given(data=st.data())
def test_breadth_first_matches_reference(data):
    spec = data.draw(networks())
    events = [data.draw(samples(spec.input)) for _ in range(data.draw(st.integers(1, 2)))]
    assert_matches_reference(spec, events, data.draw(readouts(len(spec.layers), "breadth_first")))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_sync_matches_reference(data):
    spec = data.draw(networks())
    events = [data.draw(samples(spec.input)) for _ in range(data.draw(st.integers(1, 2)))]
    assert_matches_reference(spec, events, data.draw(readouts(len(spec.layers), "sync")))
