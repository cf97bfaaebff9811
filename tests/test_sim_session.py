"""Stream sessions: a sample fed in chunks gives what run_batch gives on it."""

from __future__ import annotations

import numpy as np
import pytest
from chiploop.errors import InvalidArgument, ResourceExhausted
from chiploop.events import make_dvs_events
from chiploop.run import Readout
from chiploop.spec import InputLayer, Layer, NetworkSpec
from chiploop_server.sim import SimNetwork, SimSession, run_batch


def branching_network(leak: bool) -> NetworkSpec:
    rng = np.random.default_rng(7)
    first = Layer(
        weights=rng.integers(-20, 60, (4, 2, 3, 3)).astype(np.int8),
        threshold_high=60,
        padding=(1, 1),
        pool=(2, 2),
        destinations=(1, 2),
        leak=np.array([-3, 2, 0, 5], np.int16) if leak else None,
        leak_period_us=7 if leak else 0,
    )
    second = Layer(weights=rng.integers(-20, 60, (3, 4, 2, 2)).astype(np.int8), threshold_high=50)
    third = Layer(weights=rng.integers(-20, 60, (2, 4, 4, 4)).astype(np.int8), threshold_high=40, reset="zero")
    return NetworkSpec(layers=(first, second, third), input=InputLayer(sensor_size=(8, 8)), monitor=(0,), hop_latency_us=1)


def sample(n: int = 400, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 2000, n))
    t[100:110] = t[100]  # a run of equal times, cut by a chunk boundary below
    return make_dvs_events(rng.integers(0, 8, n), rng.integers(0, 8, n), rng.integers(0, 2, n), np.sort(t))


@pytest.mark.parametrize("mode", ["depth_first", "breadth_first"])
@pytest.mark.parametrize("leak", [False, True])
def test_chunks_give_what_run_batch_gives(mode, leak):
    net = SimNetwork.from_spec(branching_network(leak))
    events = sample()
    readout = Readout(t0_us=100, bin_us=250, num_bins=8, spatial_counts=True, membrane_layers=(0, 2), mode=mode)
    batch = run_batch(net, events, np.array([0, events.size], np.int64), readout)
    assert batch.counters[0, 4:].min() > 0, "every layer should fire"

    session = SimSession(net, readout)
    caused = [session.feed(chunk) for chunk in np.split(events, [1, 105, 106, 250, 399])]
    caused.append(session.advance(readout.t_end_us - 1))  # batch runs leak ticks to the window's end
    outputs = session.output_events()
    assert outputs.tobytes() == np.concatenate(caused).tobytes()
    assert outputs.tobytes() == batch.sample_events(0).tobytes()
    np.testing.assert_array_equal(session.counters(), batch.counters[0])
    for layer, counts in session.counts().items():
        np.testing.assert_array_equal(counts, batch.counts[layer][0])
    assert set(session.counts()) == set(batch.counts)
    for layer, state in session.membranes().items():
        np.testing.assert_array_equal(state, batch.membranes[layer][0, -1])  # the last bin ends at t_end


def test_leak_ticks_run_up_to_dropped_input_events_in_a_batch_as_in_a_session():
    """The chip's leak clock does not depend on the input filter: an event the crop drops, after the
    readout window and after every kept event, still lets the ticks before it run (a batch ran them
    only to the window's end, so its last outputs and counters fell short of a session's)."""
    layer = Layer(weights=np.zeros((1, 1, 1, 1), np.int8), threshold_high=1,
                  leak=np.array([1], np.int16), leak_period_us=10)  # fmt: skip
    spec = NetworkSpec(layers=(layer,), input=InputLayer(sensor_size=(1, 2), crop=(0, 1, 0, 1), merge_polarities=True))
    net = SimNetwork.from_spec(spec)
    readout = Readout(t0_us=0, bin_us=10, num_bins=1)
    dropped_late = make_dvs_events([0, 1], [0, 0], [0, 0], [3, 100])  # x = 1 is cropped away
    empty = make_dvs_events([], [], [], [])
    samples = {0: dropped_late, 2: dropped_late[1:]}  # sample 1 is empty
    batch = run_batch(net, np.concatenate([dropped_late, empty, dropped_late[1:]]), np.array([0, 2, 2, 3]), readout)
    for i, events in samples.items():
        session = SimSession(net, readout)
        session.feed(events)
        assert [int(e["t"]) for e in batch.sample_events(i)] == list(range(10, 101, 10))
        assert batch.sample_events(i).tobytes() == session.output_events().tobytes()
        np.testing.assert_array_equal(batch.counters[i], session.counters())
    assert batch.sample_events(1).size == 0  # an empty sample ticks only while t < the window's end (10)


def test_reset_starts_over():
    net = SimNetwork.from_spec(branching_network(leak=True))
    events = sample()
    session = SimSession(net, Readout(bin_us=500, num_bins=4))
    first = session.feed(events)
    session.reset()
    assert session.output_events().size == 0 and not session.counters().any()
    assert all(not m.any() for m in session.membranes(range(3)).values())
    assert session.feed(events).tobytes() == first.tobytes()


def test_a_session_refuses_time_going_back_sync_mode_and_bad_layers():
    net = SimNetwork.from_spec(branching_network(leak=False))
    session = SimSession(net, Readout())
    session.feed(make_dvs_events([1], [1], [0], [50]))
    with pytest.raises(InvalidArgument) as err:
        session.feed(make_dvs_events([1], [1], [0], [49]))
    assert err.value.field == "events[0].t"
    with pytest.raises(InvalidArgument) as err:
        session.feed(make_dvs_events([1, 1], [1, 1], [0, 0], [60, 55]))
    assert err.value.field == "events[1].t"
    with pytest.raises(InvalidArgument) as err:
        session.advance(10)
    assert err.value.field == "t_us"
    with pytest.raises(InvalidArgument) as err:
        session.membranes([3])
    assert err.value.field == "layers"
    with pytest.raises(InvalidArgument) as err:
        SimSession(net, Readout(mode="sync"))
    assert err.value.field == "readout.mode"


def test_a_refused_chunk_leaves_the_session_as_it_was():
    layer = Layer(np.ones((1, 1, 1, 1), np.int8), threshold_high=100, leak=np.zeros(1, np.int16), leak_period_us=1)
    net = SimNetwork.from_spec(NetworkSpec(layers=(layer,), input=InputLayer(sensor_size=(4, 4), merge_polarities=True)))
    session = SimSession(net, Readout(bin_us=10))
    session.feed(make_dvs_events([0], [0], [1], [5]))
    before = session.counters().copy()
    with pytest.raises(ResourceExhausted, match="leak_period_us"):  # ten million 1-us ticks
        session.feed(make_dvs_events([1, 2], [0, 0], [1, 1], [10, 10_000_000]))
    np.testing.assert_array_equal(session.counters(), before)
    assert session.last_time_us == 5


def test_a_bounded_session_keeps_its_newest_outputs_and_counts_them_all():
    net = SimNetwork.from_spec(branching_network(leak=True))
    events, readout = sample(), Readout(bin_us=500, num_bins=4)
    unbounded, bounded = SimSession(net, readout), SimSession(net, readout, max_kept_events=25)
    for chunk in np.array_split(events, 7):
        assert unbounded.feed(chunk).tobytes() == bounded.feed(chunk).tobytes()  # answers are whole
    everything = unbounded.output_events()
    assert everything.size > 50, "the network should fire past the bound"
    assert bounded.first_kept_event == everything.size - 25
    assert bounded.output_events().tobytes() == everything[-25:].tobytes()
    assert bounded.output_events(everything.size - 3).tobytes() == everything[-3:].tobytes()
    with pytest.raises(InvalidArgument, match="no longer kept"):
        bounded.output_events(0)
    np.testing.assert_array_equal(bounded.counters(), unbounded.counters())
    for layer, counts in unbounded.counts().items():
        np.testing.assert_array_equal(bounded.counts()[layer], counts)
    bounded.reset()
    assert bounded.first_kept_event == 0 and bounded.output_events().size == 0
