"""run_batch and SimNetwork: result layout, determinism across workers, updates, refusals."""

from __future__ import annotations

import numpy as np
import pytest
from chiploop.architectures import NMNIST_PAPER
from chiploop.errors import InvalidArgument, NetworkRejected, ResourceExhausted
from chiploop.events import CHIP_EVENT_DTYPE, DVS_EVENT_DTYPE, make_dvs_events
from chiploop.run import Readout, pack_samples
from chiploop.spec import InputLayer, Layer, NetworkSpec
from chiploop_server.sim import SimNetwork, run_batch


def paper_network(seed: int = 0) -> SimNetwork:
    """NMNIST_PAPER with random weights and thresholds that keep it active but not runaway."""
    rng = np.random.default_rng(seed)
    weights = [
        rng.integers(-100, 128, (out[0], inp[0], s.kernel, s.kernel)).astype(np.int8)
        for (inp, out), s in zip(NMNIST_PAPER.layer_shapes(), NMNIST_PAPER.stages, strict=True)
    ]
    return SimNetwork.from_spec(NMNIST_PAPER.spec(weights, [300, 2000, 3000, 3000, 2000, 1000], monitor=(2,)))


def random_samples(n: int, seed: int = 1, size=(34, 34)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        m = int(rng.integers(0, 1500))
        samples.append(
            make_dvs_events(
                rng.integers(0, size[1], m), rng.integers(0, size[0], m), rng.integers(0, 2, m), np.sort(rng.integers(0, 30000, m))
            )
        )
    return pack_samples(samples)


@pytest.fixture(scope="module")
def net() -> SimNetwork:
    return paper_network()


def test_result_layout(net):
    events, offsets = random_samples(3)
    readout = Readout(bin_us=5000, num_bins=6, membrane_layers=(0, 5))
    result = run_batch(net, events, offsets, readout)
    n = 3
    assert result.num_samples == n
    assert result.output_events.dtype == CHIP_EVENT_DTYPE
    assert set(result.counts) == {2, 5}  # the monitored layer and the output layer
    assert result.counts[5].shape == (n, 6, 10) and result.counts[5].dtype == np.int32
    assert result.counts[2].shape == (n, 6, 64)
    assert result.membranes[0].shape == (n, 6, 16, 34, 34) and result.membranes[0].dtype == np.int16
    assert result.counters.shape == (n, 4 + 6)
    np.testing.assert_array_equal(result.counter("input_events"), np.diff(offsets))
    np.testing.assert_array_equal(result.counter("output_events"), np.diff(result.output_offsets))
    assert (result.counter("output_events") == result.counters[:, 4 + 2] + result.counters[:, 4 + 5]).all()
    assert result.counters[:, 4:].min() > 0, "every layer should fire"
    assert result.compute_seconds > 0
    spatial = run_batch(net, events, offsets, Readout(bin_us=5000, num_bins=6, spatial_counts=True))
    assert spatial.counts[2].shape == (n, 6, 64, 8, 8)  # the neurons' own grid, before pooling
    np.testing.assert_array_equal(spatial.counts[2].sum(axis=(3, 4)), result.counts[2])


@pytest.mark.parametrize("mode", ["depth_first", "breadth_first", "sync"])
def test_identical_across_runs_and_workers(net, mode):
    events, offsets = random_samples(5, seed=4)
    readout = Readout(bin_us=3000, num_bins=10, membrane_layers=(1,), mode=mode)
    runs = [run_batch(net, events, offsets, readout, workers=w) for w in (1, 2, 1, 2)]
    for other in runs[1:]:
        assert other.output_events.tobytes() == runs[0].output_events.tobytes()
        np.testing.assert_array_equal(other.output_offsets, runs[0].output_offsets)
        np.testing.assert_array_equal(other.counters, runs[0].counters)
        for layer in runs[0].counts:
            np.testing.assert_array_equal(other.counts[layer], runs[0].counts[layer])
        np.testing.assert_array_equal(other.membranes[1], runs[0].membranes[1])


def test_samples_are_independent(net):
    events, offsets = random_samples(3, seed=5)
    readout = Readout(bin_us=5000, num_bins=6)
    whole = run_batch(net, events, offsets, readout, workers=2)
    for i in range(3):
        part = events[offsets[i] : offsets[i + 1]]
        alone = run_batch(net, part, np.array([0, part.size], np.int64), readout)
        assert alone.output_events.tobytes() == whole.sample_events(i).tobytes()
        np.testing.assert_array_equal(alone.counters[0], whole.counters[i])


def test_empty_batch_and_empty_samples(net):
    empty = run_batch(net, np.zeros(0, DVS_EVENT_DTYPE), np.zeros(1, np.int64), Readout(num_bins=2))
    assert empty.num_samples == 0 and empty.counts[5].shape == (0, 2, 10)
    result = run_batch(net, np.zeros(0, DVS_EVENT_DTYPE), np.zeros(3, np.int64), Readout(num_bins=2, mode="sync"))
    assert result.num_samples == 2 and not result.counters.any()


def test_with_updates_equals_deploying_the_updated_spec(net):
    rng = np.random.default_rng(9)
    new_w = rng.integers(-128, 128, net.spec.layers[1].weights.shape).astype(np.int8)
    updated = net.with_updates({1: {"weights": new_w, "threshold_high": 1500}, 4: {"threshold_low": -100}})
    spec = net.spec.with_layer(1, weights=new_w, threshold_high=1500).with_layer(4, threshold_low=-100)
    fresh = SimNetwork.from_spec(spec)
    assert updated.spec.content_hash() == spec.content_hash()
    np.testing.assert_array_equal(updated.meta, fresh.meta)
    np.testing.assert_array_equal(updated.weights, fresh.weights)
    events, offsets = random_samples(2, seed=6)
    readout = Readout(bin_us=5000, num_bins=6)
    a, b = run_batch(updated, events, offsets, readout), run_batch(fresh, events, offsets, readout)
    assert a.output_events.tobytes() == b.output_events.tobytes()
    np.testing.assert_array_equal(a.counters, b.counters)
    # The original is untouched, and an absent field or None keeps the deployed value.
    assert net.spec.layers[1].threshold_high == 2000
    same = net.with_updates({0: {"weights": None, "leak": None}})
    np.testing.assert_array_equal(same.weights, net.weights)


def test_with_updates_sets_a_leak_on_a_layer_with_a_period():
    layer = Layer(weights=np.ones((2, 1, 1, 1), np.int8), threshold_high=10, leak_period_us=5)
    net = SimNetwork.from_spec(NetworkSpec(layers=(layer,), input=InputLayer(sensor_size=(2, 2), merge_polarities=True)))
    updated = net.with_updates({0: {"leak": np.array([3, -1], np.int16)}})
    result = run_batch(updated, np.zeros(0, DVS_EVENT_DTYPE), np.zeros(2, np.int64), Readout(bin_us=50, membrane_layers=(0,)))
    # Nine ticks (5..45): channel 1 goes to -9; channel 0 fires at 12 -> 2 and at 11 -> 1, ends at 7.
    assert result.membranes[0][0, 0, :, 0, 0].tolist() == [7, -9]
    assert result.counters[0, 4] == 2 * 4  # two spikes in each of the 4 positions


@pytest.mark.parametrize(
    ("updates", "field", "error"),
    [
        ({9: {"threshold_high": 5}}, "updates[9].layer", InvalidArgument),
        ({0: {"weights": np.zeros((16, 2, 2, 2), np.int8)}}, "updates[0].weights", InvalidArgument),
        ({0: {"bias": 1}}, "updates[0].bias", InvalidArgument),
        ({0: {"threshold_high": 1.5}}, "updates[0].threshold_high", InvalidArgument),
        ({0: {"threshold_high": 40000}}, "layers[0]", NetworkRejected),
        ({0: {"weights": np.full((16, 2, 3, 3), 1.0)}}, "layers[0].weights", InvalidArgument),
        ({0: {"leak": np.zeros(16, np.int16)}}, "updates[0].leak", InvalidArgument),
        ({1: {"threshold_low": 5000}}, "layers[1]", NetworkRejected),
    ],
)
def test_with_updates_refuses_bad_updates(net, updates, field, error):
    with pytest.raises(error) as err:
        net.with_updates(updates)
    assert err.value.field == field


def bad_events():
    good = make_dvs_events([1, 2, 3], [1, 2, 3], [0, 1, 0], [5, 6, 7])
    unsorted = good.copy()
    unsorted["t"] = [5, 9, 7]
    outside = good.copy()
    outside["x"][2] = 34
    polarity = good.copy()
    polarity["p"][1] = 2
    three = np.array([0, 3], np.int64)
    return [
        (good.astype([("x", "<u2"), ("y", "<u2"), ("p", "u1"), ("t", "<i4")]), three, "events"),
        (unsorted, three, "events[2].t"),
        (outside, three, "events[2].x"),
        (polarity, three, "events[1].p"),
        (good, np.array([0, 2], np.int64), "offsets[1]"),
        (good, np.array([0, 3, 2, 3], np.int64), "offsets[2]"),
        (good, np.array([0, 3], np.int32), "offsets"),
    ]


@pytest.mark.parametrize(("events", "offsets", "field"), bad_events())
def test_bad_events_are_refused_naming_the_field(net, events, offsets, field):
    with pytest.raises(InvalidArgument) as err:
        run_batch(net, events, offsets, Readout())
    assert err.value.field == field


def test_unsorted_across_samples_is_fine(net):
    events = make_dvs_events([1, 2], [1, 2], [0, 1], [500, 5])
    run_batch(net, events, np.array([0, 1, 2], np.int64), Readout())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"readout": Readout(bin_us=0)}, "readout.bin_us"),
        ({"readout": Readout(num_bins=0)}, "readout.num_bins"),
        ({"readout": Readout(mode="lockstep")}, "readout.mode"),  # type: ignore[arg-type]
        ({"readout": Readout(membrane_layers=(6,))}, "readout.membrane_layers"),
        ({"readout": "1ms"}, "readout"),
        ({"workers": 0}, "workers"),
        # Python callers bypass the wire codec's int conversion: a fraction is refused, not divided by.
        ({"readout": Readout(bin_us=0.5)}, "readout.bin_us"),  # type: ignore[arg-type]
        ({"readout": Readout(num_bins=1.5)}, "readout.num_bins"),  # type: ignore[arg-type]
        ({"readout": Readout(t0_us=0.5)}, "readout.t0_us"),  # type: ignore[arg-type]
        ({"workers": 1.5}, "workers"),
    ],
)
def test_bad_readout_and_workers_are_refused(net, kwargs, field):
    args = {"readout": Readout(), "workers": 1, **kwargs}
    with pytest.raises(InvalidArgument) as err:
        run_batch(net, make_dvs_events([1], [1], [0], [0]), np.array([0, 1], np.int64), args["readout"], workers=args["workers"])
    assert err.value.field == field


def test_a_runaway_network_is_refused_not_run_to_exhaustion():
    rng = np.random.default_rng(0)
    weights = [
        np.abs(rng.integers(0, 128, (out[0], inp[0], s.kernel, s.kernel))).astype(np.int8)
        for (inp, out), s in zip(NMNIST_PAPER.layer_shapes(), NMNIST_PAPER.stages, strict=True)
    ]
    net = SimNetwork.from_spec(NMNIST_PAPER.spec(weights, [1] * 6))
    events, offsets = random_samples(1, seed=2)
    for mode in ("depth_first", "breadth_first", "sync"):
        with pytest.raises(ResourceExhausted, match="runaway"):
            run_batch(net, events, offsets, Readout(bin_us=30000, mode=mode), max_spikes=200_000)


def test_a_leak_period_too_short_for_the_window_is_refused():
    layer = Layer(weights=np.ones((16, 1, 1, 1), np.int8), threshold_high=10, leak=np.ones(16, np.int16), leak_period_us=1)
    net = SimNetwork.from_spec(NetworkSpec(layers=(layer,), input=InputLayer(sensor_size=(64, 64), merge_polarities=True)))
    with pytest.raises(ResourceExhausted, match=r"layers\[0\].leak_period_us"):
        run_batch(net, np.zeros(0, DVS_EVENT_DTYPE), np.zeros(2, np.int64), Readout(bin_us=10_000_000, num_bins=10))


def test_leak_tick_work_counts_each_tick_and_every_sample():
    """A tick costs about 1,300 neuron updates beyond its layer's neurons, and every empty sample
    ticks as well: a 1-neuron layer ticking each microsecond, or a thousand empty samples, would
    hold the device thread for minutes."""
    layer = Layer(weights=np.ones((1, 1, 1, 1), np.int8), threshold_high=100, leak=np.zeros(1, np.int16), leak_period_us=1)
    net = SimNetwork.from_spec(NetworkSpec(layers=(layer,), input=InputLayer(sensor_size=(1, 1), merge_polarities=True)))
    empty = np.zeros(0, DVS_EVENT_DTYPE)
    with pytest.raises(ResourceExhausted, match=r"layers\[0\].leak_period_us: 1 us over 9999999 us needs"):
        run_batch(net, empty, np.zeros(2, np.int64), Readout(bin_us=10_000_000))
    with pytest.raises(ResourceExhausted, match="us each, over 1000 samples"):
        run_batch(net, empty, np.zeros(1001, np.int64), Readout(bin_us=10_000))
    assert run_batch(net, empty, np.zeros(11, np.int64), Readout(bin_us=10_000)).counters.shape == (10, 5)


def test_from_spec_validates():
    layer = Layer(weights=np.ones((1, 1, 20, 20), np.int8), threshold_high=1)
    with pytest.raises(NetworkRejected) as err:
        SimNetwork.from_spec(NetworkSpec(layers=(layer,), input=InputLayer(sensor_size=(32, 32), merge_polarities=True)))
    assert err.value.field == "layers[0]"
    with pytest.raises(InvalidArgument):
        SimNetwork.from_spec("not a spec")  # type: ignore[arg-type]


def test_a_layer_fed_a_source_pooled_to_nothing_is_refused():
    """Layer 0's 1-row output pools to 0 rows; layer 1's padding still gives it an output, so
    without the check every spike of layer 0 would vanish on its way."""
    source = Layer(np.full((1, 1, 1, 1), 5, np.int8), threshold_high=1, pool=(2, 1), destinations=(1,))
    target = Layer(np.full((1, 1, 1, 1), 5, np.int8), threshold_high=1, padding=(1, 0))
    spec = NetworkSpec(layers=(source, target), input=InputLayer(sensor_size=(1, 4), merge_polarities=True))
    with pytest.raises(NetworkRejected, match=r"layers\[1\]: input height is 0, the chip allows 1..128"):
        SimNetwork.from_spec(spec)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"leak": np.ones(1, np.int16), "leak_period_us": 0.5}, "layers[0].leak_period_us"),
        ({"leak": np.ones(1, np.int16), "leak_period_us": 2**64}, "layers[0].leak_period_us"),
        ({"weights": [[[[1]]]]}, "layers[0].weights"),
    ],
)
def test_layer_fields_of_the_wrong_type_are_refused_by_name(change, field):
    layer = Layer(**{"weights": np.ones((1, 1, 1, 1), np.int8), "threshold_high": 10, **change})
    with pytest.raises(InvalidArgument) as err:
        SimNetwork.from_spec(NetworkSpec(layers=(layer,), input=InputLayer(sensor_size=(4, 4), merge_polarities=True)))
    assert err.value.field == field


def test_network_fields_of_the_wrong_type_are_refused_by_name():
    layer = Layer(np.ones((1, 1, 1, 1), np.int8), threshold_high=10)
    sensor = InputLayer(sensor_size=(4, 4), merge_polarities=True)
    with pytest.raises(InvalidArgument, match=r"hop_latency_us: must be an integer, got 0.5"):
        SimNetwork.from_spec(NetworkSpec(layers=(layer,), input=sensor, hop_latency_us=0.5))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=r"input.crop: must be \(y0, y1, x0, x1\)"):
        SimNetwork.from_spec(NetworkSpec(layers=(layer,), input=InputLayer(sensor_size=(4, 4), crop=(0, 1, 2))))  # type: ignore[arg-type]


def test_warm_up_compiles_every_kernel():
    from chiploop_server.sim import warm_up

    warm_up()


def test_a_result_too_large_is_refused_before_allocating_it(net):
    readout = Readout(bin_us=10, num_bins=40_000, membrane_layers=(0,), spatial_counts=True)
    with pytest.raises(ResourceExhausted, match="readout"):
        run_batch(net, make_dvs_events([1], [1], [0], [0]), np.array([0, 1], np.int64), readout)
