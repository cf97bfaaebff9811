"""The synchronous counterpart against the chip: equal in chip-model.md's narrow cases, apart otherwise."""

from __future__ import annotations

import numpy as np
import pytest
from chiploop.events import make_dvs_events
from chiploop.run import Readout
from chiploop.spec import InputLayer, Layer, NetworkSpec
from chiploop_server.sim import SimNetwork, run_batch

BIN = 100


def one_core_network(rng: np.random.Generator) -> NetworkSpec:
    """One random conv core whose every |weight| is below its threshold."""
    thr = int(rng.integers(2, 16))
    c = int(rng.integers(1, 3))
    kernel = tuple(int(k) for k in rng.integers(1, 4, 2))
    # Mixed signs, biased positive so that the core fires.
    weights = rng.integers(-(thr // 2), thr, (int(rng.integers(1, 4)), c, *kernel)).astype(np.int8)
    weights.flat[::2] = np.abs(weights.flat[::2])
    return NetworkSpec(
        layers=(
            Layer(
                weights=weights,
                threshold_high=thr,
                threshold_low=int(rng.choice([-32768, -thr])),
                reset=str(rng.choice(["subtract", "zero"])),
                stride=tuple(int(s) for s in rng.choice([1, 2], 2)),
                padding=tuple(int(p) for p in rng.integers(0, 2, 2)),
            ),
        ),
        input=InputLayer(sensor_size=(4, 3), merge_polarities=c == 1),
    )


@pytest.mark.parametrize("seed", range(25))
def test_sync_equals_the_chip_with_one_core_and_one_event_per_bin(seed):
    rng = np.random.default_rng(seed)
    spec = one_core_network(rng)
    num_bins = 60
    bins = np.sort(rng.choice(num_bins, 40, replace=False))
    t = bins * BIN + rng.integers(0, BIN, bins.size)
    events = make_dvs_events(rng.integers(0, 3, t.size), rng.integers(0, 4, t.size), rng.integers(0, 2, t.size), t)
    offsets = np.array([0, t.size], np.int64)
    net = SimNetwork.from_spec(spec)
    results = {
        mode: run_batch(net, events, offsets, Readout(bin_us=BIN, num_bins=num_bins, membrane_layers=(0,), mode=mode))
        for mode in ("depth_first", "sync")
    }
    chip, sync = results["depth_first"], results["sync"]
    assert chip.counters[0, 4] > 0, "the case should make the core fire"
    np.testing.assert_array_equal(chip.counts[0], sync.counts[0])
    np.testing.assert_array_equal(chip.membranes[0], sync.membranes[0])
    np.testing.assert_array_equal(chip.counters, sync.counters)
    # Same spikes in the same order; the chip stamps the event's time, sync the bin's start.
    fields = ["layer", "k", "y", "x"]
    np.testing.assert_array_equal(chip.output_events[fields], sync.output_events[fields])
    np.testing.assert_array_equal(sync.output_events["t"], chip.output_events["t"] // BIN * BIN)


def test_sync_and_chip_differ_on_a_positive_then_a_negative_input_in_one_bin():
    # ON events weigh +5, OFF events -5, threshold 5.
    weights = np.array([[[[-5]], [[5]]]], np.int8)
    spec = NetworkSpec(layers=(Layer(weights=weights, threshold_high=5),), input=InputLayer(sensor_size=(1, 1)))
    events = make_dvs_events([0, 0], [0, 0], [1, 0], [10, 20])
    net = SimNetwork.from_spec(spec)
    offsets = np.array([0, 2], np.int64)
    chip = run_batch(net, events, offsets, Readout(bin_us=BIN, membrane_layers=(0,)))
    sync = run_batch(net, events, offsets, Readout(bin_us=BIN, membrane_layers=(0,), mode="sync"))
    # The chip fires on +5 and cannot take it back when -5 follows; the time step sums to 0 first.
    assert chip.counts[0][0, 0, 0] == 1 and chip.membranes[0][0, 0, 0, 0, 0] == -5
    assert sync.counts[0][0, 0, 0] == 0 and sync.membranes[0][0, 0, 0, 0, 0] == 0


def test_sync_fires_multiple_spikes_per_step_and_stamps_the_bin_start():
    spec = NetworkSpec(
        layers=(Layer(weights=np.full((1, 1, 1, 1), 100, np.int8), threshold_high=30),),
        input=InputLayer(sensor_size=(1, 1), merge_polarities=True),
    )
    events = make_dvs_events([0, 0], [0, 0], [0, 0], [110, 150])
    result = run_batch(
        SimNetwork.from_spec(spec),
        events,
        np.array([0, 2], np.int64),
        Readout(bin_us=BIN, num_bins=3, membrane_layers=(0,), mode="sync"),
    )
    # Bin 1 gets 200: 6 spikes, 20 left.
    assert result.counts[0][0, :, 0].tolist() == [0, 6, 0]
    assert result.membranes[0][0, :, 0, 0, 0].tolist() == [0, 20, 20]
    assert result.output_events["t"].tolist() == [100] * 6
    assert result.counter("synops").tolist() == [2]


def test_sync_leak_counts_the_ticks_in_each_bin():
    leak = np.array([7], np.int16)
    layer = Layer(weights=np.ones((1, 1, 1, 1), np.int8), threshold_high=1000, leak=leak, leak_period_us=30)
    spec = NetworkSpec(layers=(layer,), input=InputLayer(sensor_size=(1, 1), merge_polarities=True))
    readout = Readout(bin_us=BIN, num_bins=3, membrane_layers=(0,), mode="sync")
    result = run_batch(SimNetwork.from_spec(spec), make_dvs_events([], [], [], []), np.array([0, 0], np.int64), readout)
    # Ticks at 30, 60, 90 | 120, 150, 180 | 210, 240, 270, 300 is outside (bins end at 300).
    assert result.membranes[0][0, :, 0, 0, 0].tolist() == [21, 42, 63]


def test_sync_equals_a_sinabs_forward_on_the_binned_frames():
    """The definition in docs/simulator.md, checked against sinabs (no state reaches the int16 bounds here)."""
    torch = pytest.importorskip("torch")
    sl = pytest.importorskip("sinabs.layers")
    from sinabs.activation import MembraneSubtract, MultiSpike

    torch.set_num_threads(1)
    rng = np.random.default_rng(11)
    layers = (
        Layer(weights=rng.integers(-40, 80, (4, 2, 3, 3)).astype(np.int8), threshold_high=90, threshold_low=-200,
              padding=(1, 1), pool=(2, 2), destinations=(1,)),
        Layer(weights=rng.integers(-40, 80, (3, 4, 3, 3)).astype(np.int8), threshold_high=120, stride=(2, 2),
              destinations=(2,)),
        Layer(weights=rng.integers(-60, 80, (2, 3, 2, 2)).astype(np.int8), threshold_high=70),
    )
    spec = NetworkSpec(layers=layers, input=InputLayer(sensor_size=(10, 10)), monitor=(0, 1))
    n, T, bin_us = 3, 12, 50
    samples = []
    for _ in range(n):
        m = 300
        samples.append(make_dvs_events(rng.integers(0, 10, m), rng.integers(0, 10, m), rng.integers(0, 2, m),
                                       np.sort(rng.integers(0, T * bin_us, m))))
    events = np.concatenate(samples)
    offsets = np.array([0, 300, 600, 900], np.int64)
    result = run_batch(SimNetwork.from_spec(spec), events, offsets, Readout(bin_us=bin_us, num_bins=T, mode="sync"))

    frames = np.zeros((n, T, 2, 10, 10), np.float32)
    sample = np.repeat(np.arange(n), 300)
    np.add.at(frames, (sample, events["t"] // bin_us, events["p"], events["y"], events["x"]), 1)
    x = torch.from_numpy(frames.reshape(n * T, 2, 10, 10))
    with torch.no_grad():
        for i, layer in enumerate(layers):
            conv = torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                                   padding=layer.padding, bias=False)
            conv.weight.data = torch.from_numpy(layer.weights.astype(np.float32))
            iaf = sl.IAFSqueeze(batch_size=n, spike_threshold=float(layer.threshold_high), spike_fn=MultiSpike,
                                reset_fn=MembraneSubtract(), min_v_mem=float(layer.threshold_low))
            spikes = iaf(conv(x))
            if i in result.counts:
                got = result.counts[i]
                assert got.sum() > 0
                np.testing.assert_array_equal(got, spikes.reshape(n, T, layer.out_channels, -1).sum(-1).numpy())
            x = sl.SumPool2d(layer.pool)(spikes) if layer.pool != (1, 1) else spikes
