"""Hand-computed cases of the simulator's semantics (each one a line of docs/simulator.md)."""

from __future__ import annotations

import numpy as np
import pytest
from chiploop.events import make_dvs_events
from chiploop.run import Readout
from chiploop.spec import InputLayer, Layer, NetworkSpec
from chiploop_server.sim import SimNetwork, run_batch

ONE_PIXEL = InputLayer(sensor_size=(1, 1), merge_polarities=True)


def neuron(w: int = 1, thr: int = 1, dest=(), **kw) -> Layer:
    """One neuron, one input channel, a 1x1 kernel."""
    return Layer(weights=np.full((1, 1, 1, 1), w, np.int8), threshold_high=thr, destinations=dest, **kw)


def run_one(spec: NetworkSpec, t, readout: Readout, p=None):
    t = np.asarray(t, np.int64)
    events = make_dvs_events(np.zeros(t.size), np.zeros(t.size), np.zeros(t.size) if p is None else p, t)
    result = run_batch(SimNetwork.from_spec(spec), events, np.array([0, t.size], np.int64), readout)
    return result


def events_of(result) -> list[tuple[int, int, int, int, int]]:
    return [tuple(int(v) for v in e) for e in result.sample_events(0)]


def test_state_saturates_at_int16_before_the_threshold_step():
    # Leak 20000 every 10 us, threshold 5: 20000 fires -> 19995; 39995 saturates to 32767, fires -> 32762.
    spec = NetworkSpec(layers=(neuron(thr=5, leak=np.array([20000], np.int16), leak_period_us=10),), input=ONE_PIXEL)
    result = run_one(spec, [], Readout(bin_us=10, num_bins=5, membrane_layers=(0,)))
    # Snapshot of bin i is the state after everything with time < (i + 1) * 10; ticks run to the window's end.
    assert result.membranes[0][0, :, 0, 0, 0].tolist() == [0, 19995, 32762, 32762, 32762]
    assert result.counts[0][0, :, 0].tolist() == [0, 1, 1, 1, 1]


def test_event_updates_saturate_both_ways():
    up = NetworkSpec(layers=(neuron(w=127, thr=32767),), input=ONE_PIXEL)
    # 258 x 127 = 32766; the 259th update saturates to 32767, fires and subtracts to 0 (not 126).
    result = run_one(up, np.arange(259), Readout(bin_us=1000, membrane_layers=(0,)))
    assert result.membranes[0][0, 0, 0, 0, 0] == 0
    assert result.counters[0, 4] == 1
    down = NetworkSpec(layers=(neuron(w=-128, thr=1),), input=ONE_PIXEL)
    result = run_one(down, np.arange(300), Readout(bin_us=1000, membrane_layers=(0,)))
    assert result.membranes[0][0, 0, 0, 0, 0] == -32768


def test_a_neuron_left_above_threshold_fires_at_its_next_update_only():
    spec = NetworkSpec(layers=(neuron(w=100, thr=30),), input=ONE_PIXEL)
    result = run_one(spec, [0, 5], Readout(bin_us=10, membrane_layers=(0,)))
    # 100 -> one spike, 70 left; 170 -> one spike, 140 left.
    assert result.counters[0, 4] == 2
    assert result.membranes[0][0, 0, 0, 0, 0] == 140


def test_reset_to_zero_and_threshold_low():
    spec = NetworkSpec(layers=(neuron(w=100, thr=30, reset="zero"),), input=ONE_PIXEL)
    assert run_one(spec, [0], Readout(membrane_layers=(0,))).membranes[0][0, 0, 0, 0, 0] == 0
    spec = NetworkSpec(layers=(neuron(w=-100, thr=30, threshold_low=-7),), input=ONE_PIXEL)
    assert run_one(spec, [0, 1], Readout(membrane_layers=(0,))).membranes[0][0, 0, 0, 0, 0] == -7


def test_a_tick_at_an_events_time_runs_before_it():
    # Leak -1 every 10 us; weight 1, threshold 1. At t = 10 the tick takes v to -1 first: no spike.
    spec = NetworkSpec(layers=(neuron(leak=np.array([-1], np.int16), leak_period_us=10),), input=ONE_PIXEL)
    assert run_one(spec, [10], Readout(bin_us=100)).counters[0, 4] == 0
    assert run_one(spec, [9], Readout(bin_us=100)).counters[0, 4] == 1


def diamond(order, hop: int) -> NetworkSpec:
    """L0 feeds L1 and L2 (in `order`), L1 feeds L2; L2 needs two inputs to fire."""
    return NetworkSpec(
        layers=(neuron(dest=order), neuron(dest=(2,)), neuron(thr=2)),
        input=ONE_PIXEL,
        monitor=(1,),
        hop_latency_us=hop,
    )


@pytest.mark.parametrize(
    ("order", "mode", "expected"),
    [
        # Depth-first: L0's spike reaches L1 (whose spike reaches L2: v = 1) before it reaches L2 (v = 2: fires
        # on the update carrying L0's time 0 + 1 hop, so at t = 2).
        ((1, 2), "depth_first", [(1, 0, 0, 0, 2), (2, 0, 0, 0, 2)]),
        # Breadth-first: L0 -> L1 and L0 -> L2 run first, then L1 -> L2 fires L2, at L1's time 2 + 1.
        ((1, 2), "breadth_first", [(1, 0, 0, 0, 2), (2, 0, 0, 0, 3)]),
        # Depth-first with L2 first: L0 -> L2 (v = 1), then L0 -> L1 -> L2 fires at 3.
        ((2, 1), "depth_first", [(1, 0, 0, 0, 2), (2, 0, 0, 0, 3)]),
    ],
)
def test_diamond_order_and_hop_latency(order, mode, expected):
    result = run_one(diamond(order, hop=1), [0], Readout(bin_us=10, mode=mode))
    assert events_of(result) == expected


def test_spikes_keep_their_neuron_coordinates_and_counts_use_their_timestamps():
    # A 2x2 input, 1x1 conv with 2 channels, pooled 2x2 into a 1x1 output neuron.
    first = Layer(weights=np.array([[[[1]]], [[[0]]]], np.int8), threshold_high=1, pool=(2, 2), destinations=(1,))
    second = Layer(weights=np.ones((1, 2, 1, 1), np.int8), threshold_high=1)
    spec = NetworkSpec(
        layers=(first, second),
        input=InputLayer(sensor_size=(2, 2), merge_polarities=True),
        monitor=(0,),
        hop_latency_us=5,
    )
    events = make_dvs_events([1], [1], [0], [3])
    result = run_batch(SimNetwork.from_spec(spec), events, np.array([0, 1], np.int64), Readout(bin_us=5, num_bins=3))
    # Layer 0 fires at its own (k=0, y=1, x=1), t = 3 + 5; layer 1 at (0, 0, 0), t = 13.
    assert events_of(result) == [(0, 0, 1, 1, 8), (1, 0, 0, 0, 13)]
    assert result.counts[0][0, :, 0].tolist() == [0, 1, 0]
    assert result.counts[1][0, :, 0].tolist() == [0, 0, 1]


def test_input_stage_pools_crops_flips_and_counts_drops():
    # 4x4 sensor, pool 2 -> 2x2, crop rows 0..1 and columns 1..2 (one pooled column), flip_y.
    inp = InputLayer(sensor_size=(4, 4), pool=(2, 2), crop=(0, 2, 1, 2), flip_y=True)
    # Output channel k sees only polarity k.
    w = np.zeros((2, 2, 1, 1), np.int8)
    w[0, 0] = 1
    w[1, 1] = 1
    layer = Layer(weights=w, threshold_high=1)
    spec = NetworkSpec(layers=(layer,), input=inp)
    # (x=3, y=0, p=1) -> pooled (y 0, x 1) -> cropped (0, 0) -> flipped y: (1, 0), channel 1.
    # (x=0, y=0) -> pooled x 0 is outside the crop: dropped.
    events = make_dvs_events([3, 0], [0, 0], [1, 0], [0, 1])
    result = run_batch(SimNetwork.from_spec(spec), events, np.array([0, 2], np.int64), Readout(spatial_counts=True))
    assert events_of(result) == [(0, 1, 1, 0, 0)]
    assert result.counters[0, :2].tolist() == [2, 1]
