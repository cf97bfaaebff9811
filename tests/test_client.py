"""ChipClient against a real daemon: every RPC from the client side, chunking, async runs,
streams, retries and the error mapping."""

from __future__ import annotations

import gc
import socket
import threading
import time

import numpy as np
import pytest
from chiploop.client import ChipClient, ChipInfo, Deployment
from chiploop.errors import (
    BackendUnavailable,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from chiploop.events import CHIP_EVENT_DTYPE, DVS_EVENT_DTYPE, make_dvs_events
from chiploop.limits import SPECK
from chiploop.run import Readout, pack_samples
from chiploop.spec import InputLayer, Layer, NetworkSpec
from conftest import small_spec

READOUT = Readout(bin_us=100_000, num_bins=3, membrane_layers=(1,))


def assert_same_result(a, b) -> None:
    np.testing.assert_array_equal(a.output_events, b.output_events)
    np.testing.assert_array_equal(a.output_offsets, b.output_offsets)
    assert a.counts.keys() == b.counts.keys() and a.membranes.keys() == b.membranes.keys()
    for k in a.counts:
        np.testing.assert_array_equal(a.counts[k], b.counts[k])
    for k in a.membranes:
        np.testing.assert_array_equal(a.membranes[k], b.membranes[k])
    np.testing.assert_array_equal(a.counters, b.counters)


def test_info_describes_the_daemon(client):
    info = client.info()
    assert isinstance(info, ChipInfo)
    assert info.backend == "sim" and info.limits == SPECK and info.protocol_version == 1
    assert info.max_message_bytes == 64 << 20 and "sim" in info.backends_available


def test_deploy_run_update_run_outputs_follow_the_weights(client, nmnist_samples):
    spec = small_spec(threshold=8)
    first = client.deploy(spec)
    assert isinstance(first, Deployment) and len(first.cores) == 2
    assert client.deploy(spec) == Deployment(first.model_id, first.cores, cached=True)

    samples = nmnist_samples[:4]
    before = client.run(first.model_id, samples, READOUT)
    assert before.num_samples == 4 and before.counts[1].shape == (4, 3, 10)
    assert before.counts[1].sum() > 0
    assert before.counts[1].flags.writeable  # the client hands out arrays the caller owns

    louder = np.clip(spec.layers[1].weights.astype(np.int16) + 3, -128, 127).astype(np.int8)
    new_id = client.update_weights(first.model_id, {1: louder})
    assert new_id != first.model_id
    after = client.run(new_id, samples, READOUT)
    assert after.counts[1].sum() > before.counts[1].sum()  # stronger output weights, more output spikes
    np.testing.assert_array_equal(after.counts.get(0, 0), before.counts.get(0, 0))  # layer 0 untouched

    silent = client.update_weights(new_id, {1: {"weights": np.zeros_like(louder), "threshold_high": 100}})
    assert client.run(silent, samples, READOUT).counts[1].sum() == 0
    back = client.update_weights(silent, {1: {"weights": spec.layers[1].weights, "threshold_high": 8}})
    assert back == first.model_id  # content-addressed: the same network, the same id
    assert_same_result(client.run(back, samples, READOUT), before)


def test_chunked_pipelined_runs_equal_one_call(daemon, client, nmnist_samples):
    model = client.deploy(small_spec(threshold=8)).model_id
    assert len(client._chunk_bounds(model, pack_samples(nmnist_samples)[1], READOUT)) == 2  # 830 KB: pipelined
    with ChipClient(daemon.address, max_in_flight=1) as single:
        assert len(single._chunk_bounds(model, pack_samples(nmnist_samples)[1], READOUT)) == 1
        whole = single.run(model, nmnist_samples, READOUT)
    assert_same_result(client.run(model, nmnist_samples, READOUT), whole)
    with ChipClient(daemon.address, max_chunk_bytes=60_000, max_in_flight=3) as small:
        bounds = small._chunk_bounds(model, pack_samples(nmnist_samples)[1], READOUT)
        assert len(bounds) >= 8
        assert_same_result(small.run(model, nmnist_samples, READOUT), whole)


def test_packed_input_and_a_single_sample_are_accepted(client, nmnist_samples):
    model = client.deploy(small_spec(threshold=8)).model_id
    events, offsets = pack_samples(nmnist_samples[:3])
    assert_same_result(client.run(model, (events, offsets), READOUT), client.run(model, nmnist_samples[:3], READOUT))
    assert client.run(model, nmnist_samples[0], READOUT).num_samples == 1
    assert client.run(model, [], READOUT).num_samples == 0


def test_run_async_overlaps_and_matches_run(client, nmnist_samples):
    model = client.deploy(small_spec(threshold=8)).model_id
    futures = [client.run_async(model, nmnist_samples[i : i + 4], READOUT) for i in (0, 4, 8)]
    for i, future in zip((0, 4, 8), futures, strict=True):
        assert_same_result(future.result(60), client.run(model, nmnist_samples[i : i + 4], READOUT))


def test_event_dtype_is_checked_before_sending(client):
    with pytest.raises(InvalidArgument, match=r"samples\[1\]: dtype must be chiploop.events.DVS_EVENT_DTYPE"):
        client.run("any", [make_dvs_events([1], [1], [0], [0]), np.zeros(3, np.int64)])


def test_a_deadline_that_is_no_number_of_seconds_is_refused_before_any_call(client):
    with pytest.raises(InvalidArgument, match=r"^timeout: must be a number of seconds in \(0, 1e\+08\], got nan"):
        client.info(timeout=float("nan"))
    with pytest.raises(InvalidArgument, match=r"^timeout: .* got -1"):
        client.info(timeout=-1)
    with pytest.raises(InvalidArgument, match=r"^timeout: .* got inf"):
        ChipClient(client.address, timeout=float("inf"))
    with pytest.raises(InvalidArgument, match=r"^timeout: .* got 1e\+300"):  # gRPC would take it as expired
        client.info(timeout=1e300)
    assert client.info(timeout=1e8).backend == "sim"


def test_an_address_grpc_would_misread_is_refused():
    # gRPC wraps ports past 65535 (116836 reaches 51300) and says little about an empty target.
    for address in ("127.0.0.1:116836", "127.0.0.1:0", "", "localhost", ":50051", "127.0.0.1:port"):
        with pytest.raises(InvalidArgument, match="^address: must be HOST:PORT"):
            ChipClient(address)
    for address in ("dns:///127.0.0.1:117837", "ipv4:127.0.0.1:50051,127.0.0.1:70000"):
        with pytest.raises(InvalidArgument, match="^address: port (117837|70000) of"):
            ChipClient(address)
    for address in ("[::1]:50051", "unix:/tmp/chiploop.sock", "dns:///localhost:50051", "dns:localhost:50051",
                    "ipv4:127.0.0.1:50051", "ipv6:[::1]:50051", "xds:///chiploop", "chip.example.org:50051"):  # fmt: skip
        ChipClient(address).close()


def test_server_refusals_surface_as_chiploop_errors_with_the_field(client):
    model = client.deploy(small_spec()).model_id
    with pytest.raises(InvalidArgument) as err:
        client.run(model, [make_dvs_events([50], [1], [0], [0])])
    assert err.value.field == "events[0].x" and "sensor width 34" in str(err.value)
    with pytest.raises(NotFound, match="model_id: no model 'missing'"):
        client.run("missing", [make_dvs_events([1], [1], [0], [0])])
    with pytest.raises(InvalidArgument, match=r"updates\[1\]\.weights: shape must stay"):
        client.update_weights(model, {1: np.zeros((2, 2, 2, 2), np.int8)})


def test_a_stream_session_feeds_chunks_reads_resets_and_outlives_its_stream(client, nmnist_samples):
    model = client.deploy(small_spec(threshold=8)).model_id
    sample = nmnist_samples[0]
    run = client.run(model, [sample], READOUT)
    with client.stream(model, READOUT) as stream:
        outs = [stream.send(chunk) for chunk in np.array_split(sample, 5)]
        assert stream.events_in == sample.size
        np.testing.assert_array_equal(np.concatenate(outs), run.sample_events(0))
        outputs = stream.read_outputs()
        assert outputs.output_events.dtype == CHIP_EVENT_DTYPE
        np.testing.assert_array_equal(outputs.counts[1], run.counts[1][0])
        assert outputs.counters[0] == sample.size
        membranes = stream.read_membranes()
        assert membranes[1].shape == (10, 1, 1) and membranes[1].dtype == np.int16
        assert stream.read_membranes((0,))[0].shape == (4, 8, 8)
        stream.reset()
        assert stream.read_outputs().counters.sum() == 0
        stream.send(sample[:500])  # time starts again after a reset
    with pytest.raises(FailedPrecondition, match="stream is closed"):
        stream.send(sample[:10])
    assert stream.read_outputs().counters[0] == 500  # readable after the stream ended
    assert client.info().sessions_open >= 1


def test_outputs_over_the_message_limit_come_in_pages_and_lose_nothing(daemon, nmnist_samples):
    """A stream's answer and a session's outputs that one message cannot hold are paged."""
    from chiploop_server.config import DaemonConfig
    from chiploop_server.daemon import Daemon

    spec = small_spec(threshold=2, monitor=(0,))  # busy, and the hidden layer's spikes come out too
    chunks = np.array_split(nmnist_samples[0][:2400], 6)  # 5 KB of events each
    readout = Readout(bin_us=100_000, num_bins=3)
    with ChipClient(daemon.address) as reference:
        with reference.stream(reference.deploy(spec).model_id, readout) as stream:
            expected = [stream.send(chunk) for chunk in chunks]
            expected_outputs = stream.read_outputs()
    limit = 8 << 10
    assert max(e.nbytes for e in expected) > limit and expected_outputs.output_events.nbytes > 4 * limit
    with Daemon(DaemonConfig(address="127.0.0.1:0", max_message_bytes=limit, warm_up=False)) as small:
        with ChipClient(small.address) as chip:
            with chip.stream(chip.deploy(spec).model_id, readout) as stream:
                for chunk, want in zip(chunks, expected, strict=True):
                    np.testing.assert_array_equal(stream.send(chunk), want)
                outputs = stream.read_outputs()
    np.testing.assert_array_equal(outputs.output_events, expected_outputs.output_events)
    np.testing.assert_array_equal(outputs.counters, expected_outputs.counters)
    for layer, counts in expected_outputs.counts.items():
        np.testing.assert_array_equal(outputs.counts[layer], counts)


def test_sessions_belong_to_their_user(daemon, nmnist_samples):
    with ChipClient(daemon.address, token="alice") as alice, ChipClient(daemon.address, token="bob") as bob:
        model = alice.deploy(small_spec()).model_id
        with alice.stream(model, READOUT) as stream:
            stream.send(nmnist_samples[0][:100])
            with pytest.raises(NotFound, match="session_id"):
                bob.read_outputs(stream.session_id)


def test_a_client_given_no_token_takes_the_environments(daemon, nmnist_samples, monkeypatch):
    monkeypatch.setenv("CHIPLOOP_TOKEN", "alice")
    with ChipClient(daemon.address) as alice, ChipClient(daemon.address, token="bob") as bob:
        model = alice.deploy(small_spec()).model_id
        with alice.stream(model, READOUT) as stream:
            stream.send(nmnist_samples[0][:100])
            with pytest.raises(NotFound, match="session_id"):
                bob.read_outputs(stream.session_id)
            with ChipClient(daemon.address, token="alice") as also_alice:
                assert also_alice.read_outputs(stream.session_id).counters[0] == 100


def test_an_unknown_model_ends_the_stream_with_not_found_and_leaves_no_thread_behind(client):
    before = threading.active_count()
    for _ in range(5):
        with pytest.raises(NotFound, match="model_id"):
            client.stream("missing", READOUT)
    # gRPC reads a stream's requests in a thread of its own: each failed stream must end it.
    for _ in range(100):
        if threading.active_count() <= before:
            break
        time.sleep(0.05)
    assert threading.active_count() <= before


def test_a_stream_dropped_without_close_ends_its_request_thread(client):
    model = client.deploy(small_spec()).model_id
    before = threading.active_count()
    for _ in range(3):
        client.stream(model, READOUT)  # opened, then dropped at once
    gc.collect()
    for _ in range(100):
        if threading.active_count() <= before:
            break
        time.sleep(0.05)
    assert threading.active_count() <= before


def wide_spec(channels: int, kernel: int = 3, threshold: int = 8) -> NetworkSpec:
    """One convolution of ``channels`` on 34x34 input: kernel**2 * channels synops per event."""
    weights = np.ones((channels, 2, kernel, kernel), np.int8)
    return NetworkSpec(
        layers=(Layer(weights=weights, threshold_high=threshold, padding=(kernel // 2, kernel // 2)),),
        input=InputLayer(sensor_size=(34, 34)),
    )


def test_a_stream_whose_counts_would_not_fit_in_memory_is_refused_at_open(client):
    model = client.deploy(wide_spec(16)).model_id
    with pytest.raises(ResourceExhausted, match=r"a stream session would take 1\.4 GiB"):
        client.stream(model, Readout(bin_us=1000, num_bins=20_000, spatial_counts=True))


def test_a_stream_answers_within_the_client_timeout_or_is_cancelled(daemon, client):
    model = client.deploy(wide_spec(16, kernel=7, threshold=30_000)).model_id
    rng = np.random.default_rng(0)
    n = 2_000_000  # one sample of ~1.6 G synops: the device is busy with it for a second or two
    sample = np.zeros(n, DVS_EVENT_DTYPE)
    sample["x"], sample["y"], sample["t"] = rng.integers(0, 34, n), rng.integers(0, 34, n), np.arange(n)
    busy = client.run_async(model, [sample], Readout(bin_us=n, num_bins=1))
    for _ in range(200):  # until the run is on the device (it takes a moment to send)
        if client.info().device_busy:
            break
        time.sleep(0.01)
    with ChipClient(daemon.address, timeout=0.2) as impatient:
        with pytest.raises(DeadlineExceeded, match="within the client's timeout of 0.2 s; the stream was cancelled"):
            impatient.stream(model, Readout())
    busy.result()


def test_packed_offsets_that_do_not_cut_the_events_are_refused_before_sending(client):
    events = make_dvs_events([1] * 10, [1] * 10, [0] * 10, list(range(10)))
    model = client.deploy(small_spec()).model_id
    with pytest.raises(InvalidArgument, match="offsets\\[1\\]: must equal the number of events 10, got 5"):
        client.run(model, (events, np.array([0, 5])), READOUT)
    with pytest.raises(InvalidArgument, match="offsets\\[0\\]: must be 0, got 3"):
        client.run(model, (events, np.array([3, 10])), READOUT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unavailable_is_retried_with_backoff_then_raised():
    with ChipClient(f"127.0.0.1:{_free_port()}", retries=2, backoff_s=0.1, timeout=2) as chip:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match="127.0.0.1"):
            chip.info()
        assert time.monotonic() - started >= 0.1 * 0.5 + 0.2 * 0.5  # two backoffs, at their shortest


def test_the_timeout_bounds_a_call_with_all_its_retries():
    with ChipClient(f"127.0.0.1:{_free_port()}", retries=50, backoff_s=0.5, timeout=1.0) as chip:
        started = time.monotonic()
        with pytest.raises((BackendUnavailable, DeadlineExceeded)):
            chip.info()
        # 50 retries at up to 2 s each would take over a minute; the call's 1 s ends them.
        assert time.monotonic() - started < 10


def test_a_chunked_run_that_fails_sends_none_of_its_remaining_chunks(nmnist_samples):
    from chiploop_server.config import DaemonConfig
    from chiploop_server.daemon import Daemon

    bad = nmnist_samples[0].copy()
    bad["x"][0] = 200  # outside the 34 x 34 sensor: refused before it reaches the queue
    with Daemon(DaemonConfig(address="127.0.0.1:0", warm_up=False)) as daemon:
        with ChipClient(daemon.address, max_chunk_bytes=1024, max_in_flight=1) as chip:  # a chunk per sample
            model = chip.deploy(small_spec()).model_id
            with pytest.raises(InvalidArgument, match=r"events\[0\]\.x"):
                chip.run(model, [bad, *nmnist_samples[:12]], READOUT)
        # close() waited for whatever was under way: at most the one chunk already picked up ran.
        assert daemon.scheduler.jobs_done <= 1


def test_close_lets_runs_under_way_finish_and_leaves_no_pool_thread(nmnist_samples):
    from chiploop_server.config import DaemonConfig
    from chiploop_server.daemon import Daemon

    samples = nmnist_samples  # 16
    with Daemon(DaemonConfig(address="127.0.0.1:0", warm_up=False)) as daemon:
        model = ChipClient(daemon.address).deploy(small_spec()).model_id
        for started_by in ("run", "run_async"):
            chip = ChipClient(daemon.address, max_chunk_bytes=1024, max_in_flight=1)  # a chunk per sample
            outcome = []
            if started_by == "run":  # another thread's run: its chunks all go, close() waits for them
                runner = threading.Thread(target=lambda c=chip, o=outcome: o.append(c.run(model, samples, READOUT)))
                runner.start()
                while daemon.scheduler.jobs_done == 0:
                    time.sleep(0.005)
            else:  # under way when close() starts, it creates the chunk pool meanwhile
                pending = chip.run_async(model, samples, READOUT)
                time.sleep(0.05)
            chip.close()
            if started_by == "run":
                runner.join(60)
            else:
                outcome.append(pending.result(60))
            assert outcome[0].num_samples == len(samples)
            assert not [t for t in threading.enumerate() if t.name.startswith("chiploop-client")]


def test_a_full_device_queue_is_waited_out_not_failed(nmnist_samples):
    """A batch's pipelined chunks alone fill a queue of 1: the client tries them again later."""
    from chiploop_server.config import DaemonConfig
    from chiploop_server.daemon import Daemon

    with Daemon(DaemonConfig(address="127.0.0.1:0", max_queue=1, warm_up=False)) as daemon:
        with ChipClient(daemon.address, max_chunk_bytes=1024, max_in_flight=4, retries=0) as chip:
            model = chip.deploy(small_spec()).model_id
            assert chip.run(model, nmnist_samples, READOUT).num_samples == len(nmnist_samples)


def test_grpcs_own_concurrent_call_limit_is_waited_out_like_a_full_queue():
    """gRPC answers RESOURCE_EXHAUSTED by itself when a server holds ``maximum_concurrent_rpcs``
    calls. The daemon sizes that limit so that only an overload reaches it, which a test cannot
    make happen on cue: here a bare gRPC server with a limit of 1 holds one GetInfo open."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from chiploop.v1 import chiploop_pb2 as pb

    release, entered = threading.Event(), threading.Event()

    def get_info(request, context):
        entered.set()
        release.wait(30)
        return pb.GetInfoResponse(backend="sim")

    handler = grpc.method_handlers_generic_handler("chiploop.v1.Chip", {
        "GetInfo": grpc.unary_unary_rpc_method_handler(
            get_info, pb.GetInfoRequest.FromString, pb.GetInfoResponse.SerializeToString
        ),
    })  # fmt: skip
    server = grpc.server(ThreadPoolExecutor(4), handlers=[handler], maximum_concurrent_rpcs=1)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with ChipClient(f"127.0.0.1:{port}", retries=0, backoff_s=0.05, timeout=30) as holder, ChipClient(
            f"127.0.0.1:{port}", retries=0, backoff_s=0.05, timeout=30
        ) as waiter:
            first = threading.Thread(target=holder.info)
            first.start()
            assert entered.wait(10)
            threading.Timer(0.5, release.set).start()
            assert waiter.info().backend == "sim"  # refused by gRPC while the first call held it
            first.join(10)
    finally:
        release.set()
        server.stop(0)


def test_a_daemon_that_comes_up_while_the_client_retries_is_reached():
    from chiploop_server.local import LocalDaemon

    port = _free_port()
    local = LocalDaemon(address=f"127.0.0.1:{port}", extra_args=["--no-warm-up"])
    starter = threading.Timer(0.3, local.start)
    starter.start()
    try:
        with ChipClient(f"127.0.0.1:{port}", retries=100, backoff_s=0.2, timeout=60) as chip:
            assert chip.info().backend == "sim"
    finally:
        starter.join()
        local.stop()


def test_a_call_on_a_closed_client_is_cancelled_by_name(daemon):
    chip = ChipClient(daemon.address)
    chip.close()
    with pytest.raises(Cancelled, match="the client was closed during the call"):
        chip.info()
