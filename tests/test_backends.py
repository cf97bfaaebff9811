"""The daemon's plain objects, tested directly: the device contract (once, over every backend),
the registry, the scheduler and the session store. No gRPC here (tests/test_daemon.py has it)."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from chiploop.errors import (
    BackendUnavailable,
    DeadlineExceeded,
    InvalidArgument,
    NetworkRejected,
    NotFound,
    ResourceExhausted,
)
from chiploop.events import CHIP_EVENT_DTYPE
from chiploop.run import Readout, bin_counts, pack_samples
from chiploop_server.devices import available_backends, open_device, real_samna_installed
from chiploop_server.jobs import Job
from chiploop_server.registry import Registry
from chiploop_server.scheduler import Scheduler
from chiploop_server.sessions import SessionStore
from conftest import small_spec

BACKENDS = [
    pytest.param("sim", id="sim"),
    pytest.param("specksim", id="specksim", marks=pytest.mark.samna),
    pytest.param("speck", id="speck", marks=[pytest.mark.samna, pytest.mark.hardware]),
]

READOUT = Readout(bin_us=100_000, num_bins=3, membrane_layers=(0,))


def readout_for(device) -> Readout:
    """READOUT in the device's own mode, with membranes where it can read them."""
    return Readout(
        bin_us=100_000, num_bins=3, membrane_layers=(0,) if device.supports_membranes else (), mode=device.modes[0]
    )


@pytest.fixture(scope="module", params=BACKENDS)
def device(request):
    name = request.param
    if name != "sim" and not real_samna_installed():
        pytest.skip(f"backend {name!r} needs SynSense's real samna package")
    if name == "speck" and not os.environ.get("CHIPLOOP_SPECK_BOARD"):
        pytest.skip("no Speck board (set CHIPLOOP_SPECK_BOARD=1 with one plugged in)")
    dev = open_device(name, workers=1)
    yield dev
    dev.close()


@pytest.fixture(scope="module")
def sim_device():
    dev = open_device("sim", workers=1)
    yield dev
    dev.close()


@pytest.fixture
def batch(nmnist_samples):
    return pack_samples(nmnist_samples[:3])


# ------------------------------------------------------------------ device contract (every backend)


def test_device_info_names_backend_chip_and_limits(device):
    info = device.info()
    assert info["backend"] == device.name
    assert info["chip_model"]
    assert info["limits"].cores == 9


def test_device_run_returns_the_packed_result_shapes(device, batch):
    events, offsets = batch
    spec = small_spec(threshold=8)
    result = device.run(device.deploy(spec), events, offsets, readout_for(device))
    n = offsets.size - 1
    assert result.num_samples == n
    assert result.output_events.dtype == CHIP_EVENT_DTYPE
    assert result.output_offsets[-1] == result.output_events.size
    assert result.counts[1].shape == (n, 3, 10)
    if device.supports_membranes:
        assert result.membranes[0].shape == (n, 3, 4, 8, 8) and result.membranes[0].dtype == np.int16
    assert result.counters.shape == (n, 4 + 2)
    np.testing.assert_array_equal(result.counter("input_events"), np.diff(offsets))
    assert result.compute_seconds > 0


def test_device_runs_samples_independently_and_deterministically(device, batch):
    events, offsets = batch
    handle = device.deploy(small_spec(threshold=8))
    together = device.run(handle, events, offsets, readout_for(device))
    for i in range(offsets.size - 1):
        alone = device.run(handle, events[offsets[i] : offsets[i + 1]], np.array([0, offsets[i + 1] - offsets[i]]), readout_for(device))
        np.testing.assert_array_equal(alone.counts[1][0], together.counts[1][i])
        np.testing.assert_array_equal(alone.sample_events(0), together.sample_events(i))


def test_device_update_changes_the_outputs_and_keeps_the_old_handle(device, batch):
    events, offsets = batch
    spec = small_spec(threshold=8)
    handle = device.deploy(spec)
    silenced = device.update(handle, {1: {"weights": np.zeros_like(spec.layers[1].weights)}})
    assert device.run(silenced, events, offsets, readout_for(device)).counts[1].sum() == 0
    assert device.run(handle, events, offsets, readout_for(device)).counts[1].sum() > 0


def test_device_session_in_chunks_matches_a_run_and_resets(device, nmnist_samples):
    sample = nmnist_samples[0]
    handle = device.deploy(small_spec(threshold=8))
    run = device.run(handle, sample, np.array([0, sample.size]), readout_for(device))
    session = device.open_session(handle, readout_for(device))
    outs = [session.feed(chunk) for chunk in np.array_split(sample, 4)]
    np.testing.assert_array_equal(np.concatenate(outs), run.sample_events(0))
    np.testing.assert_array_equal(session.counts()[1], run.counts[1][0])
    if device.supports_membranes:
        assert session.membranes((0,))[0].shape == (4, 8, 8)
    assert session.counters()[0] == sample.size
    session.reset()
    assert session.output_events().size == 0 and session.counters().sum() == 0


# ------------------------------------------------------------------ backend selection


def test_samna_backends_are_refused_with_install_advice_when_samna_is_the_pypi_stub():
    if real_samna_installed():
        pytest.skip("the real samna is installed here")
    for name in ("speck", "specksim"):
        with pytest.raises(BackendUnavailable, match="needs the real samna package.*pip install samna"):
            open_device(name)
    assert available_backends() == ["sim"]


def test_unknown_backend_is_refused_naming_the_known_ones():
    with pytest.raises(InvalidArgument, match="backend: unknown backend 'tpu'; known: sim, speck, specksim"):
        open_device("tpu")


# ------------------------------------------------------------------ registry


def test_deploying_the_same_network_twice_is_cached(sim_device):
    registry = Registry(sim_device)
    first, cached1 = registry.deploy(small_spec())
    again, cached2 = registry.deploy(small_spec())
    assert (cached1, cached2) == (False, True)
    assert again is first and len(registry) == 1
    assert first.model_id == small_spec().content_hash()
    assert len(first.cores) == 2


def test_concurrent_deploys_of_one_network_register_it_once(sim_device):
    registry = Registry(sim_device)
    barrier, answers = threading.Barrier(8), []

    def deploy():
        barrier.wait()
        answers.append(registry.deploy(small_spec()))

    threads = [threading.Thread(target=deploy) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(answers) == 8 and len(registry) == 1
    assert [cached for _, cached in answers].count(False) == 1
    assert len({id(model) for model, _ in answers}) == 1  # every caller got the registered one


def test_registry_is_bounded_least_recently_used_first(sim_device):
    registry = Registry(sim_device, max_models=2)
    a = registry.deploy(small_spec(seed=1))[0].model_id
    b = registry.deploy(small_spec(seed=2))[0].model_id
    registry.get(a)  # a is now the most recently used
    c = registry.deploy(small_spec(seed=3))[0].model_id
    assert registry.get(a) and registry.get(c)
    with pytest.raises(NotFound, match=f"model_id: no model '{b}'.*evicted"):
        registry.get(b)


def test_update_rehashes_only_the_changed_layer_and_registers_a_new_id(sim_device):
    registry = Registry(sim_device)
    spec = small_spec()
    base, _ = registry.deploy(spec)
    new_weights = np.ones_like(spec.layers[1].weights)
    updated, cached = registry.update(base.model_id, {1: {"weights": new_weights, "threshold_high": 9}})
    assert not cached and updated.model_id != base.model_id
    assert updated.layer_hashes[0] == base.layer_hashes[0]
    assert updated.layer_hashes[1] != base.layer_hashes[1]
    expected = spec.with_layer(1, weights=new_weights, threshold_high=9)
    assert updated.model_id == expected.content_hash()  # the same id a fresh deploy would get
    assert registry.get(base.model_id) is base  # the old model stays usable
    back, cached = registry.update(updated.model_id, {1: {"weights": spec.layers[1].weights, "threshold_high": 6}})
    assert cached and back is base


@pytest.mark.parametrize(
    ("update", "match"),
    [
        ({1: {"weights": np.zeros((10, 4, 8, 7), np.int8)}}, r"updates\[1\]\.weights: shape must stay"),
        ({1: {"weights": np.full((10, 4, 8, 8), np.nan)}}, r"layers\[1\]\.weights: contains NaN or inf"),
        ({1: {"weights": np.full((10, 4, 8, 8), 300, np.int16)}}, r"layers\[1\]: weight is 300, the chip allows -128..127"),
        ({0: {"threshold_high": 0}}, r"layers\[0\]: threshold_high is 0"),
        ({5: {"threshold_high": 3}}, r"updates\[5\]\.layer: no layer 5"),
        ({0: {"leak": np.zeros(4, np.int16)}}, r"updates\[0\]\.leak: layer 0 was deployed without a leak period"),
        ({0: {"stride": 2}}, r"updates\[0\]\.stride: cannot be updated"),
    ],
)
def test_bad_updates_are_refused_naming_the_field(sim_device, update, match):
    registry = Registry(sim_device)
    base, _ = registry.deploy(small_spec())
    with pytest.raises(InvalidArgument, match=match):
        registry.update(base.model_id, update)


def test_a_network_over_a_chip_limit_is_refused_naming_layer_limit_and_value(sim_device):
    spec = small_spec()
    too_wide = spec.with_layer(0, weights=np.ones((4, 2, 17, 17), np.int8))
    with pytest.raises(NetworkRejected, match=r"layers\[0\]: kernel size \(y\) is 17, the chip allows 1..16") as err:
        Registry(sim_device).deploy(too_wide)
    assert (err.value.layer, err.value.limit, err.value.value) == (0, "kernel size (y)", 17)


# ------------------------------------------------------------------ scheduler


def _held_scheduler(device, **options):
    """A scheduler whose worker is held by a running job until ``release`` is set, so that
    a test controls the queue. Returns (scheduler, the running job's future, release)."""
    started, release = threading.Event(), threading.Event()

    def payload(device):
        started.set()
        release.wait(10)
        return "blocker"

    scheduler = Scheduler(device, **options)
    running = scheduler.submit(Job("run", "a", payload))
    started.wait(5)
    return scheduler, running, release


def test_scheduler_runs_jobs_in_fifo_order_on_one_thread(sim_device):
    scheduler, _, release = _held_scheduler(sim_device)
    order, threads = [], set()

    def record(i):
        def payload(device):
            order.append(i)
            threads.add(threading.current_thread().name)
            return i

        return payload

    futures = [scheduler.submit(Job("run", f"user{i % 2}", record(i))) for i in range(5)]
    assert scheduler.depth() == 5
    release.set()
    assert [f.result(5) for f in futures] == [0, 1, 2, 3, 4]
    assert order == [0, 1, 2, 3, 4] and len(threads) == 1
    scheduler.stop()


def test_a_full_queue_is_refused_with_resource_exhausted(sim_device):
    scheduler, _, release = _held_scheduler(sim_device, max_queue=2)
    scheduler.submit(Job("run", "a", lambda d: 1))
    scheduler.submit(Job("run", "a", lambda d: 2))
    with pytest.raises(ResourceExhausted, match="queue is full"):
        scheduler.submit(Job("run", "a", lambda d: 3))
    release.set()
    scheduler.stop()


def test_a_full_queue_takes_a_streams_reserved_job_and_sheds_the_dead_ones(sim_device):
    """Streams opened and cancelled in a loop while the device is busy leave no pile of jobs."""
    from chiploop_server.scheduler import FifoQueue

    jobs = FifoQueue()
    scheduler, _, release = _held_scheduler(sim_device, max_queue=1, queue=jobs)
    scheduler.submit(Job("run", "a", lambda d: 1))  # the queue is full
    for _ in range(20):
        scheduler.submit(Job("open", "b", lambda d: 2, reserved=True)).cancel()
    assert len(jobs) <= 2
    with pytest.raises(ResourceExhausted, match="queue is full"):
        scheduler.submit(Job("run", "a", lambda d: 3))
    release.set()
    scheduler.stop()


def test_a_job_whose_deadline_passed_in_the_queue_is_answered_without_running(sim_device):
    scheduler, _, release = _held_scheduler(sim_device)
    ran = []
    late = scheduler.submit(Job("run", "a", lambda d: ran.append(1), deadline=time.monotonic() + 0.05))
    time.sleep(0.1)
    release.set()
    with pytest.raises(DeadlineExceeded, match="in the queue, before the run started"):
        late.result(5)
    assert not ran and scheduler.jobs_expired == 1
    scheduler.stop()


def test_a_job_whose_deadline_passed_holds_no_place_in_a_full_queue(sim_device):
    scheduler, _, release = _held_scheduler(sim_device, max_queue=1)
    late = scheduler.submit(Job("run", "a", lambda d: 1, deadline=time.monotonic() + 0.05))
    time.sleep(0.1)
    waiting = scheduler.submit(Job("run", "a", lambda d: 2))  # the queue's one place is free again
    with pytest.raises(DeadlineExceeded, match="in the queue, before the run started"):
        late.result(0)  # answered at once, not when the worker reaches it
    assert scheduler.jobs_expired == 1 and scheduler.depth() == 1
    with pytest.raises(ResourceExhausted, match="queue is full"):
        scheduler.submit(Job("run", "a", lambda d: 3))
    release.set()
    assert waiting.result(5) == 2
    scheduler.stop()


def test_cancelled_jobs_are_skipped_and_failures_reach_the_caller(sim_device):
    scheduler, _, release = _held_scheduler(sim_device)
    ran = []
    cancelled = scheduler.submit(Job("run", "a", lambda d: ran.append(1)))
    assert cancelled.cancel()

    def fail(device):
        raise InvalidArgument("events", "bad")

    failing = scheduler.submit(Job("run", "a", fail))
    release.set()
    with pytest.raises(InvalidArgument, match="events: bad"):
        failing.result(5)
    assert not ran
    scheduler.stop()


def test_stopping_fails_the_queued_jobs_and_refuses_new_ones(sim_device):
    scheduler, running, release = _held_scheduler(sim_device)
    queued = scheduler.submit(Job("run", "a", lambda d: 1))
    threading.Timer(0.1, release.set).start()
    scheduler.stop(timeout=5)
    assert running.result(5) == "blocker"  # the running job finishes
    with pytest.raises(BackendUnavailable, match="shutting down"):
        queued.result(5)
    with pytest.raises(BackendUnavailable):
        scheduler.submit(Job("run", "a", lambda d: 1))


# ------------------------------------------------------------------ sessions


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _add(store: SessionStore, user: str = "u"):
    return store.add(user, "m", Readout(), (34, 34), 2, session=object())


def test_sessions_outlive_their_stream_until_unused_for_the_ttl():
    clock = Clock()
    store = SessionStore(max_sessions=4, ttl_s=10, clock=clock)
    entry = _add(store)
    clock.now = 100  # a streaming session never expires
    assert store.get(entry.session_id, "u") is entry
    store.end_stream(entry.session_id)
    clock.now = 105
    assert store.get(entry.session_id, "u") is entry  # readable after its stream ended; use refreshes it
    clock.now = 116
    with pytest.raises(NotFound, match="expired after 10 s unused"):
        store.get(entry.session_id, "u")


def test_a_full_store_evicts_the_oldest_ended_session_or_refuses():
    store = SessionStore(max_sessions=2, ttl_s=100, clock=Clock())
    a, b = _add(store), _add(store)
    with pytest.raises(ResourceExhausted, match="2 sessions are streaming"):
        _add(store)
    store.end_stream(b.session_id)
    store.end_stream(a.session_id)
    store.get(a.session_id, "u")  # a used more recently than b
    c = _add(store)
    assert store.get(a.session_id, "u") and store.get(c.session_id, "u")
    with pytest.raises(NotFound):
        store.get(b.session_id, "u")


def test_ending_a_stream_counts_as_using_its_session():
    store = SessionStore(max_sessions=2, ttl_s=100, clock=Clock())
    a, b = _add(store), _add(store)
    store.end_stream(b.session_id)  # b ended long ago
    store.end_stream(a.session_id)  # a opened first but streamed until now
    _add(store)
    assert store.get(a.session_id, "u")
    with pytest.raises(NotFound):
        store.get(b.session_id, "u")


def test_a_session_is_invisible_to_other_users():
    store = SessionStore(clock=Clock())
    entry = _add(store, user="alice")
    with pytest.raises(NotFound):
        store.get(entry.session_id, "bob")


# ------------------------------------------------------------------ the samna backends' host-side parts (no samna needed)


@pytest.mark.parametrize("spatial", [False, True])
def test_bin_counts_from_events_equal_the_simulators_counts(sim_device, batch, spatial):
    events, offsets = batch
    spec = small_spec(threshold=8, monitor=(0,))
    readout = Readout(bin_us=50_000, num_bins=5, spatial_counts=spatial)
    result = sim_device.run(sim_device.deploy(spec), events, offsets, readout)
    counts = bin_counts(spec, result.output_events, result.output_offsets, readout)
    assert counts.keys() == result.counts.keys() == {0, 1}
    for layer in counts:
        np.testing.assert_array_equal(counts[layer], result.counts[layer])


def test_samna_backends_refuse_what_they_cannot_configure():
    from chiploop_server.devices.samna_backends import check_readout, check_supported

    spec = small_spec()
    with pytest.raises(InvalidArgument, match=r"layers\[0\]\.weights: backend speck needs square kernels, got 3x2"):
        check_supported(spec.with_layer(0, weights=np.ones((4, 2, 3, 2), np.int8)), "speck")
    with pytest.raises(InvalidArgument, match=r"layers\[0\]\.pool: backend speck needs square pooling"):
        check_supported(spec.with_layer(0, pool=(2, 1)), "speck")
    with pytest.raises(InvalidArgument, match="monitor: backend specksim"):
        check_supported(small_spec(monitor=(0,)), "specksim")
    with pytest.raises(InvalidArgument, match="readout.membrane_layers: backend speck cannot snapshot"):
        check_readout(Readout(membrane_layers=(1,)), 2, "depth_first", "speck")
    with pytest.raises(InvalidArgument, match="readout.mode: backend specksim runs breadth_first only"):
        check_readout(Readout(), 2, "breadth_first", "specksim")


def test_a_board_refuses_input_longer_than_it_may_take_in_real_time():
    from chiploop.events import make_dvs_events
    from chiploop_server.devices.samna_backends import MAX_REALTIME_SPAN_US, check_realtime_span

    short = make_dvs_events([1, 2], [1, 2], [0, 1], [5, 5 + MAX_REALTIME_SPAN_US])
    long = make_dvs_events([1, 2], [1, 2], [0, 1], [0, 10**15])
    events, offsets = pack_samples([short, np.zeros(0, short.dtype), long])
    check_realtime_span(short, np.array([0, 2]), "events")
    with pytest.raises(InvalidArgument, match=r"events\[2\]: spans 1000000000000000 us; the board runs in real time"):
        check_realtime_span(events, offsets, "events")


def test_reading_a_chip_that_never_falls_silent_stops_at_the_limit():
    from chiploop_server.devices.samna_backends import drain

    replies = iter([[1, 2], [], [3]])
    assert drain(lambda: next(replies), poll_s=0.001) == [1, 2]  # until one poll finds nothing
    started = time.monotonic()
    assert len(drain(lambda: [0], limit_s=0.2, poll_s=0.01)) >= 10  # spikes for ever: stops after 0.2 s
    assert time.monotonic() - started < 5


def test_the_speck_backend_names_every_package_it_lacks_without_importing_them(monkeypatch):
    import sys

    from chiploop_server.devices import missing_for

    monkeypatch.setitem(sys.modules, "sinabs", None)  # as if not installed (find_spec: not importable)
    assert "sinabs" in missing_for("speck") and "sinabs" not in missing_for("specksim")
    assert "speck" not in available_backends()
    assert ("samna" in missing_for("speck")) == (not real_samna_installed())
    assert "samna" not in sys.modules or real_samna_installed()
