"""The daemon over real gRPC on loopback: health, reflection, every refusal with its code and
field, limits, deadlines, config, graceful stop. After each refusal a good call shows the
daemon still serves."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import gc
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

import grpc
import numpy as np
import pytest
from chiploop import wire
from chiploop.client import ChipClient
from chiploop.errors import Cancelled, DeadlineExceeded, InvalidArgument, ResourceExhausted
from chiploop.events import DVS_EVENT_DTYPE, make_dvs_events
from chiploop.run import Readout, pack_samples
from chiploop.spec import InputLayer, Layer, NetworkSpec
from chiploop.v1 import chiploop_pb2 as pb
from chiploop.v1 import chiploop_pb2_grpc as pb_grpc
from chiploop_server import config as daemon_config
from chiploop_server.config import DaemonConfig
from chiploop_server.daemon import Daemon
from chiploop_server.jobs import Job
from conftest import small_spec
from grpc_health.v1 import health_pb2, health_pb2_grpc


@pytest.fixture(scope="module")
def channel(daemon):
    with grpc.insecure_channel(daemon.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.ChipStub(channel)


@pytest.fixture(scope="module")
def model_id(daemon):
    with ChipClient(daemon.address) as chip:
        return chip.deploy(small_spec(threshold=8)).model_id


def run_request(model_id: str, events: np.ndarray, offsets=None, readout: Readout | None = None) -> pb.RunRequest:
    readout = Readout() if readout is None else readout
    request = pb.RunRequest(model_id=model_id)
    wire.encode_array(events, request.events)
    wire.encode_array(np.array([0, len(events)], np.int64) if offsets is None else offsets, request.offsets)
    wire.encode_readout(readout, request.readout)
    return request


def refused(call, code: grpc.StatusCode, *match: str) -> str:
    """Make a call that must fail with ``code`` and a message holding every ``match``."""
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == code, err.value.details()
    for m in match:
        assert m in err.value.details(), err.value.details()
    return err.value.details()


def still_serves(stub, model_id: str) -> None:
    events = make_dvs_events([1, 2], [3, 4], [0, 1], [10, 20])
    response = stub.Run(run_request(model_id, events), timeout=30)
    assert wire.decode_run_result(response).num_samples == 1


# ------------------------------------------------------------------ standard services


def test_health_answers_serving_for_the_server_and_the_chip_service(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "chiploop.v1.Chip"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_and_describes_the_chip_service(channel):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    db = ProtoReflectionDescriptorDatabase(channel)
    services = set(db.get_services())
    assert {"chiploop.v1.Chip", "grpc.health.v1.Health"} <= services
    chip = db.FindFileContainingSymbol("chiploop.v1.Chip")
    assert chip.name == "chiploop/v1/chiploop.proto"


# ------------------------------------------------------------------ refusals, each followed by a good call


@pytest.mark.parametrize(
    ("events", "where", "what"),
    [
        (make_dvs_events([1, 40], [1, 1], [0, 0], [0, 1]), "events[1].x", "x must be < sensor width 34, got 40"),
        (make_dvs_events([1, 1], [1, 34], [0, 0], [0, 1]), "events[1].y", "y must be < sensor height 34"),
        (make_dvs_events([1, 1], [1, 1], [0, 2], [0, 1]), "events[1].p", "p must be 0 or 1"),
        (make_dvs_events([1, 1], [1, 1], [0, 0], [5, 3]), "events[1].t", "timestamps must be sorted, 3 follows 5"),
        (make_dvs_events([1, 1], [1, 1], [0, 0], [-5, 3]), "events[0].t", "t must be >= 0"),
        (make_dvs_events([1, 1], [1, 1], [0, 0], [0, 2**62]), "events[1].t", "t must be <= 1152921504606846976"),
    ],
)
def test_bad_events_are_invalid_argument_naming_the_event(stub, model_id, events, where, what):
    refused(lambda: stub.Run(run_request(model_id, events), timeout=10), grpc.StatusCode.INVALID_ARGUMENT, where, what)
    still_serves(stub, model_id)


def test_unsorted_events_within_one_sample_of_a_batch_are_refused_naming_the_sample(stub, model_id):
    a = make_dvs_events([1, 1], [1, 1], [0, 0], [0, 9])
    b = make_dvs_events([1, 1, 1], [1, 1, 1], [0, 0, 0], [0, 7, 6])
    events, offsets = pack_samples([a, b])  # 9 -> 0 across the samples is fine, 7 -> 6 is not
    refused(
        lambda: stub.Run(run_request(model_id, events, offsets), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "events[4].t",
        "(sample 1)",
    )
    still_serves(stub, model_id)


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda r: wire.encode_array(np.zeros(3, np.int64), r.events), "events: dtype must be"),
        (
            lambda r: wire.encode_array(np.zeros(3, [("x", "<u2"), ("y", "<u2"), ("p", "u1"), ("t", "<i4")]), r.events),
            "events: dtype must be",
        ),
        (lambda r: wire.encode_array(np.zeros((2, 1), DVS_EVENT_DTYPE), r.events), "events: must be 1-D"),
        (lambda r: setattr(r.events, "data", r.events.data[:-1]), "events.data: holds"),
        (lambda r: r.ClearField("events"), "events: missing"),
        (lambda r: wire.encode_array(np.array([0, 1], np.int32), r.offsets), "offsets: dtype must be int64"),
        (lambda r: wire.encode_array(np.array([0, 1, 5], np.int64), r.offsets), "offsets[2]: must equal the number of events 2"),
        (lambda r: wire.encode_array(np.array([1, 2], np.int64), r.offsets), "offsets[0]: must be 0"),
        (lambda r: setattr(r.readout, "num_bins", 0), "readout.num_bins: must be 1.."),
        (lambda r: setattr(r.readout, "bin_us", 2**62), "readout.bin_us: must be 1..1152921504606846976, got 4611686018427387904"),
        (lambda r: (setattr(r.readout, "bin_us", 2**59), setattr(r.readout, "num_bins", 4)),
         "readout: the bins end at 2305843009213693952 us, past"),
        (lambda r: r.readout.membrane_layers.append(7), "readout.membrane_layers: no layer 7"),
    ],
)
def test_malformed_run_requests_are_invalid_argument_naming_the_field(stub, model_id, mutate, where):
    request = run_request(model_id, make_dvs_events([1, 2], [1, 2], [0, 1], [0, 5]))
    mutate(request)
    refused(lambda: stub.Run(request, timeout=10), grpc.StatusCode.INVALID_ARGUMENT, where)
    still_serves(stub, model_id)


@pytest.mark.parametrize(
    ("spec_change", "match"),
    [
        (lambda s: s.with_layer(1, weights=np.full((10, 4, 8, 8), np.nan, np.float32)), ["layers[1].weights", "NaN or inf"]),
        (lambda s: s.with_layer(1, weights=np.full((10, 4, 8, 8), np.inf)), ["layers[1].weights", "NaN or inf"]),
        (
            lambda s: s.with_layer(0, weights=np.full((4, 2, 3, 3), 200, np.int16)),
            ["layers[0]: weight is 200, the chip allows -128..127"],
        ),
        (lambda s: s.with_layer(0, weights=np.ones((4, 2, 3, 3), np.float32)), ["layers[0].weights", "quantize first"]),
        (
            lambda s: s.with_layer(0, weights=np.ones((1100, 2, 3, 3), np.int8)),
            ["layers[0]: output channels is 1100, the chip allows 1..1024"],
        ),
        (lambda s: s.with_layer(0, stride=(3, 3)), ["layers[0]: stride (y) is 3, the chip allows 1/2/4/8"]),
        (lambda s: s.with_layer(1, threshold_high=40000), ["layers[1]: threshold_high is 40000"]),
        (lambda s: dataclasses.replace(s, hop_latency_us=2**62), ["hop_latency_us: must be 0..1000000"]),
    ],
)
def test_networks_breaking_the_chip_are_refused_naming_layer_limit_and_value(stub, model_id, spec_change, match):
    request = pb.DeployRequest()
    wire.encode_network(spec_change(small_spec()), request.network)
    refused(lambda: stub.Deploy(request, timeout=10), grpc.StatusCode.INVALID_ARGUMENT, *match)
    still_serves(stub, model_id)


def test_bad_weight_updates_are_refused_naming_the_field(stub, model_id):
    for weights, match in (
        (np.full((10, 4, 8, 8), np.nan), "layers[1].weights: contains NaN"),
        (np.full((10, 4, 8, 8), -129, np.int16), "layers[1]: weight is -129"),
        (np.zeros((10, 4, 8), np.int8), "updates[0].weights: must be 4-D"),
    ):
        request = pb.UpdateWeightsRequest(model_id=model_id)
        wire.encode_updates({1: weights}, request.updates)
        refused(lambda r=request: stub.UpdateWeights(r, timeout=10), grpc.StatusCode.INVALID_ARGUMENT, match)
    still_serves(stub, model_id)


def test_unknown_model_and_session_ids_are_not_found(stub, model_id):
    refused(lambda: stub.Run(run_request("0" * 32, make_dvs_events([1], [1], [0], [0])), timeout=10),
            grpc.StatusCode.NOT_FOUND, "model_id", "0" * 32)  # fmt: skip
    update = pb.UpdateWeightsRequest(model_id="nope", updates=[pb.LayerUpdate(layer=0, threshold_high=3)])
    refused(lambda: stub.UpdateWeights(update, timeout=10), grpc.StatusCode.NOT_FOUND, "no model 'nope'")
    for call in (stub.ReadOutputs, stub.ReadMembranes):
        refused(lambda c=call: c(pb.SessionRequest(session_id="gone"), timeout=10), grpc.StatusCode.NOT_FOUND, "session_id")
    refused(lambda: stub.Reset(pb.ResetRequest(session_id="gone"), timeout=10), grpc.StatusCode.NOT_FOUND, "'gone'")
    still_serves(stub, model_id)


def test_what_a_refusal_quotes_of_the_request_is_cut_to_a_bounded_message(daemon, model_id):
    """A 4 MB id was echoed whole: gRPC answered RESOURCE_EXHAUSTED (the status's metadata overflowed)
    in place of NOT_FOUND, and the daemon logged 4 MB a call."""
    with grpc.insecure_channel(daemon.address, options=[("grpc.max_send_message_length", 8 << 20)]) as ch:
        stub = pb_grpc.ChipStub(ch)
        details = refused(lambda: stub.Run(run_request("A" * (4 << 20), make_dvs_events([1], [1], [0], [0])),
                                           timeout=10), grpc.StatusCode.NOT_FOUND, "model_id: no model 'AAA", "bytes cut")  # fmt: skip
        assert len(details) < 2100
        wide = "\u20ac" * (1 << 16)  # 3 bytes a character: a cut by characters still overflowed
        details = refused(lambda: stub.ReadOutputs(pb.SessionRequest(session_id=wide), timeout=10),
                          grpc.StatusCode.NOT_FOUND, "session_id: no session", "bytes cut")  # fmt: skip
        assert len(details.encode()) < 2100
        request = run_request(model_id, make_dvs_events([1], [1], [0], [0]))
        request.events.dtype = "x" * (1 << 20)
        details = refused(lambda: stub.Run(request, timeout=10), grpc.StatusCode.INVALID_ARGUMENT, "events.dtype")
        assert len(details) < 2100
        still_serves(stub, model_id)


def test_a_malformed_authorization_header_is_unauthenticated(stub, model_id):
    refused(
        lambda: stub.GetInfo(pb.GetInfoRequest(), metadata=(("authorization", "Basic abc"),), timeout=10),
        grpc.StatusCode.UNAUTHENTICATED,
        "Bearer <token>",
    )
    assert stub.GetInfo(pb.GetInfoRequest(), metadata=(("authorization", "Bearer abc"),), timeout=10).backend


def test_a_stream_must_open_first_and_feed_sorted_chunks(stub, model_id):
    chunk = pb.StreamRequest(events=wire.encode_array(make_dvs_events([1], [1], [0], [5])))
    refused(lambda: list(stub.StreamEvents(iter([chunk]), timeout=10)), grpc.StatusCode.INVALID_ARGUMENT, "open:")
    opening = pb.StreamRequest(open=pb.StreamOpen(model_id=model_id, readout=wire.encode_readout(Readout())))
    earlier = pb.StreamRequest(events=wire.encode_array(make_dvs_events([1], [1], [0], [2])))
    responses = []
    with pytest.raises(grpc.RpcError) as err:
        for response in stub.StreamEvents(iter([opening, chunk, earlier]), timeout=10):
            responses.append(response)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "events[0].t" in err.value.details()
    assert len(responses) == 2 and responses[1].events_in == 1  # the opening and the good chunk were answered
    still_serves(stub, model_id)


def test_a_page_of_outputs_from_a_bad_place_is_refused(stub, model_id):
    opening = pb.StreamRequest(open=pb.StreamOpen(model_id=model_id, readout=wire.encode_readout(Readout())))
    chunk = pb.StreamRequest(events=wire.encode_array(make_dvs_events([1, 2], [1, 2], [0, 1], [5, 6])))
    session = list(stub.StreamEvents(iter([opening, chunk]), timeout=10))[0].session_id
    total = stub.ReadOutputs(pb.SessionRequest(session_id=session), timeout=10).total_events
    assert stub.ReadOutputs(pb.SessionRequest(session_id=session, from_event=total), timeout=10).total_events == total
    refused(
        lambda: stub.ReadOutputs(pb.SessionRequest(session_id=session, from_event=-1), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT, "from_event", "must be >= 0",
    )  # fmt: skip
    refused(
        lambda: stub.ReadOutputs(pb.SessionRequest(session_id=session, from_event=total + 1), timeout=10),
        grpc.StatusCode.FAILED_PRECONDITION, "past the session's", "reset",
    )  # fmt: skip


def test_paging_is_opt_in_and_the_pages_of_a_read_share_one_reset_count(nmnist_samples):
    """A peer that does not ask for pages gets an error by name where one message cannot hold the
    answer, never a silently cut one; a reset between pages shows in ``resets``."""
    spec = small_spec(threshold=2, monitor=(0,))  # busy: one chunk causes more spikes than 8 KiB hold
    with Daemon(DaemonConfig(address="127.0.0.1:0", max_message_bytes=8 << 10, warm_up=False)) as d:
        with ChipClient(d.address) as chip, grpc.insecure_channel(d.address) as ch:
            stub = pb_grpc.ChipStub(ch)
            model = chip.deploy(spec).model_id
            opening = pb.StreamRequest(open=pb.StreamOpen(model_id=model, readout=wire.encode_readout(Readout())))
            chunk = pb.StreamRequest(events=wire.encode_array(nmnist_samples[0][:600]))
            answers = []
            with pytest.raises(grpc.RpcError) as err:
                for answer in stub.StreamEvents(iter([opening, chunk]), timeout=10):
                    answers.append(answer)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
            assert "StreamOpen.paged" in err.value.details() and "the chunk was taken" in err.value.details()
            session = answers[0].session_id
            refused(
                lambda: stub.ReadOutputs(pb.SessionRequest(session_id=session), timeout=10),
                grpc.StatusCode.RESOURCE_EXHAUSTED, "read them in pages", "from_event",
            )  # fmt: skip
            page = stub.ReadOutputs(pb.SessionRequest(session_id=session, from_event=0), timeout=10)
            assert 0 < page.output_events.shape[0] < page.total_events
            stub.Reset(pb.ResetRequest(session_id=session), timeout=10)
            again = stub.ReadOutputs(pb.SessionRequest(session_id=session, from_event=0), timeout=10)
            assert again.resets == page.resets + 1 and again.total_events == 0
        # Counts that leave no room for events are no reason to refuse a read that has none.
        busy_counts = Readout(bin_us=1000, num_bins=125)  # 7 KB of counts
        with ChipClient(d.address) as chip, chip.stream(chip.deploy(spec).model_id, busy_counts) as stream:
            assert stream.read_outputs().output_events.size == 0


def test_a_session_keeps_its_newest_outputs_read_in_pages_and_older_ones_are_refused_by_name(daemon, nmnist_samples):
    """max_session_events bounds what a session keeps; the stream's answers and the counts and
    counters still cover everything, and asking for what is gone says so."""
    spec = small_spec(threshold=2, monitor=(0,))
    chunks = np.array_split(nmnist_samples[0][:2400], 6)
    readout = Readout(bin_us=100_000, num_bins=3)
    with ChipClient(daemon.address) as reference, reference.stream(reference.deploy(spec).model_id, readout) as s:
        answers = [s.send(chunk) for chunk in chunks]
        everything = s.read_outputs()
    keep = 1000
    assert everything.output_events.size > 2 * keep
    config = DaemonConfig(address="127.0.0.1:0", max_message_bytes=8 << 10, max_session_events=keep, warm_up=False)
    with Daemon(config) as d, ChipClient(d.address) as chip, grpc.insecure_channel(d.address) as ch:
        with chip.stream(chip.deploy(spec).model_id, readout) as stream:
            for chunk, answer in zip(chunks, answers, strict=True):
                np.testing.assert_array_equal(stream.send(chunk), answer)  # answers are whole
            kept = stream.read_outputs()  # in pages: 1,000 events do not fit 8 KiB
        gone = everything.output_events.size - keep
        assert kept.first_event == gone
        np.testing.assert_array_equal(kept.output_events, everything.output_events[gone:])
        np.testing.assert_array_equal(kept.counters, everything.counters)
        for layer, counts in everything.counts.items():
            np.testing.assert_array_equal(kept.counts[layer], counts)
        stub, session = pb_grpc.ChipStub(ch), stream.session_id
        for request in (pb.SessionRequest(session_id=session), pb.SessionRequest(session_id=session, from_event=0)):
            refused(
                lambda request=request: stub.ReadOutputs(request, timeout=10),
                grpc.StatusCode.FAILED_PRECONDITION, f"newest {keep} output events", "max_session_events",
                f"events 0..{gone - 1}",
            )  # fmt: skip
        page = stub.ReadOutputs(pb.SessionRequest(session_id=session, from_event=gone + 5), timeout=10)
        assert page.first_event == gone + 5 and page.total_events == everything.output_events.size
        oldest = pb.SessionRequest(session_id=session, from_oldest=True)  # unpaged: what is kept, if it fits
        refused(lambda: stub.ReadOutputs(oldest, timeout=10), grpc.StatusCode.RESOURCE_EXHAUSTED, "read them in pages")
        with ChipClient(d.address) as other:
            assert other.info().sessions_open == 1
    with pytest.raises(InvalidArgument, match="max_session_events"):
        DaemonConfig(max_session_events=-1).check()


def test_a_refusal_on_the_device_leaves_no_cycle_holding_the_request():
    """A job's exception sits in its future, and its traceback held the handler's frames, which held
    the future and the refused chunk: megabytes a refusal, kept until a full garbage collection."""
    spec = small_spec()
    with Daemon(DaemonConfig(address="127.0.0.1:0", warm_up=False)) as d, ChipClient(d.address) as chip:
        model = chip.deploy(spec).model_id
        opening = pb.StreamRequest(open=pb.StreamOpen(model_id=model, readout=wire.encode_readout(Readout())))
        later = pb.StreamRequest(events=wire.encode_array(make_dvs_events([1], [1], [0], [500])))
        earlier = pb.StreamRequest(events=wire.encode_array(make_dvs_events([1] * 1000, [1] * 1000, [0] * 1000, [5] * 1000)))
        with grpc.insecure_channel(d.address) as ch:
            stub = pb_grpc.ChipStub(ch)
            gc.collect()
            gc.disable()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                for _ in range(3):  # the chip refuses a chunk that goes back in time, on its worker
                    with pytest.raises(grpc.RpcError) as err:
                        list(stub.StreamEvents(iter([opening, later, earlier]), timeout=10))
                    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                gc.collect()
                held = {o.f_code.co_name for o in gc.garbage if isinstance(o, types.FrameType)}
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
                gc.enable()
        assert not held & {"_do", "_wait", "StreamEvents"}, held


def test_a_client_repeating_a_refused_call_is_logged_once_and_then_counted(caplog):
    """A client looping on a bad request wrote a log line per call (25 MB in minutes in a soak)."""
    with caplog.at_level("INFO", logger="chiploop.transport"):
        with Daemon(DaemonConfig(address="127.0.0.1:0", warm_up=False)) as d, grpc.insecure_channel(d.address) as ch:
            stub = pb_grpc.ChipStub(ch)
            gone = pb.SessionRequest(session_id="gone")
            for token in ("alice", "bob"):
                for _ in range(20):
                    with pytest.raises(grpc.RpcError):
                        stub.ReadOutputs(gone, metadata=(("authorization", f"Bearer {token}"),), timeout=10)
            with pytest.raises(grpc.RpcError):
                stub.GetInfo(pb.GetInfoRequest(), metadata=(("authorization", "Basic x"),), timeout=10)
            said = [r.getMessage() for r in caplog.records if r.name == "chiploop.transport"]
            assert len(said) == 3, said  # one for each user's kind, one for the bad header
            assert all("ReadOutputs refused (NOT_FOUND) for token-" in line and "ipv4:127.0.0.1" in line
                       for line in said[:2])  # fmt: skip
            assert "GetInfo refused (UNAUTHENTICATED) for an unauthenticated caller" in said[2]
        said = [r.getMessage() for r in caplog.records if r.name == "chiploop.transport"][3:]
    assert len(said) == 2 and all("ReadOutputs refused (NOT_FOUND)" in line and " 19 more times" in line
                                  for line in said), said  # fmt: skip


def test_ended_sessions_expire_on_a_daemon_that_only_runs_batches(nmnist_samples):
    config = DaemonConfig(address="127.0.0.1:0", session_ttl_s=0.5, warm_up=False)
    with Daemon(config) as d, ChipClient(d.address) as chip:
        model = chip.deploy(small_spec()).model_id
        with chip.stream(model) as stream:
            stream.send(nmnist_samples[0][:100])
        deadline = time.monotonic() + 10
        while d.sessions._entries and time.monotonic() < deadline:  # noqa: SLF001 - len() would expire them
            chip.run(model, [nmnist_samples[1][:100]])  # Runs never touch the session store
            time.sleep(0.2)
        assert not d.sessions._entries  # noqa: SLF001


def test_answers_exactly_at_the_message_limit_are_sent_and_a_byte_over_is_refused_by_name(daemon, nmnist_samples):
    """The daemon's own size checks are exact: they refuse nothing gRPC would send."""
    spec, events = small_spec(threshold=2, monitor=(0,)), nmnist_samples[0][:100]
    opening = pb.StreamRequest(open=pb.StreamOpen(readout=wire.encode_readout(Readout())))
    chunk = pb.StreamRequest(events=wire.encode_array(events))

    def answers(address: str) -> dict[str, object]:
        """Each answer's message, or the refusal's status code."""
        out: dict[str, object] = {}
        with ChipClient(address) as chip, grpc.insecure_channel(address) as ch:
            stub, model = pb_grpc.ChipStub(ch), chip.deploy(spec).model_id
            opening.open.model_id = model
            for name, call in (
                ("run", lambda: stub.Run(run_request(model, events), timeout=10)),
                ("stream", lambda: list(stub.StreamEvents(iter([opening, chunk]), timeout=10))[1]),
            ):
                try:
                    out[name] = call()
                except grpc.RpcError as err:
                    out[name] = err.code()
            session = stub.StreamEvents(iter([opening, chunk]), timeout=10)
            session_id = next(session).session_id
            with contextlib.suppress(grpc.RpcError):  # the chunk is taken even where its answer is refused
                list(session)
            try:
                out["read"] = stub.ReadOutputs(pb.SessionRequest(session_id=session_id), timeout=10)
            except grpc.RpcError as err:
                out["read"] = err.code()
        return out

    sizes = {name: answer.ByteSize() for name, answer in answers(daemon.address).items()}
    for name, size in sizes.items():
        for limit, fits in ((size, True), (size - 1, False)):
            with Daemon(DaemonConfig(address="127.0.0.1:0", max_message_bytes=limit, warm_up=False)) as d:
                got = answers(d.address)[name]
            assert isinstance(got, grpc.StatusCode) != fits, (name, size, limit, got)
            if not fits:
                assert got == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_answers_that_do_not_page_are_refused_by_name_over_the_limit():
    """Counts alone, or membranes, over the message limit: the daemon says what to do, not gRPC."""
    wide = NetworkSpec(
        layers=(Layer(weights=np.ones((16, 2, 1, 1), np.int8), threshold_high=100),),
        input=InputLayer(sensor_size=(34, 34)),
    )  # 32 bytes of weights, 37 KB of states
    with Daemon(DaemonConfig(address="127.0.0.1:0", max_message_bytes=32 << 10, warm_up=False)) as d:
        with ChipClient(d.address) as chip:
            model = chip.deploy(wide).model_id
            with chip.stream(model, Readout(bin_us=1000, num_bins=10, spatial_counts=True)) as stream:
                with pytest.raises(ResourceExhausted, match="counts and counters alone take"):
                    stream.read_outputs()  # no output events at all: 740 KB of counts
            with chip.stream(model, Readout(membrane_layers=(0,))) as stream:
                with pytest.raises(ResourceExhausted, match="read fewer layers per call"):
                    stream.read_membranes()


def test_an_expired_client_deadline_is_deadline_exceeded(daemon, stub, model_id, nmnist_samples):
    with ChipClient(daemon.address, retries=0) as chip:
        with pytest.raises(DeadlineExceeded):
            chip.run(model_id, nmnist_samples, Readout(), timeout=0.001)
    still_serves(stub, model_id)


# ------------------------------------------------------------------ a daemon with small limits, in-process


@pytest.fixture(scope="module")
def small_daemon():
    settings = DaemonConfig(address="127.0.0.1:0", max_message_bytes=32 << 10, warm_up=False)
    with Daemon(settings) as d:
        yield d


def test_a_message_over_the_size_limit_is_resource_exhausted(small_daemon, nmnist_samples):
    with ChipClient(small_daemon.address, retries=0) as chip:
        model = chip.deploy(small_spec(threshold=8)).model_id
        big = nmnist_samples[0]
        assert big.nbytes > 32 << 10
        with pytest.raises(ResourceExhausted, match="larger than max"):
            chip.run(model, [big])
        assert chip.run(model, [big[:100]]).num_samples == 1  # and it keeps serving


def test_a_response_over_the_limit_is_split_by_the_client(small_daemon, daemon, nmnist_samples):
    samples = [s[:200] for s in nmnist_samples[:8]]  # 21 KB of events in all: the request fits
    readout = Readout(bin_us=10_000, num_bins=30, membrane_layers=(0,))  # 7.7 KB of membranes per sample do not
    spec = small_spec(threshold=8)
    with ChipClient(small_daemon.address, retries=0) as chip, ChipClient(daemon.address) as reference:
        result = chip.run(chip.deploy(spec).model_id, samples, readout)
        expected = reference.run(reference.deploy(spec).model_id, samples, readout)
    np.testing.assert_array_equal(result.membranes[0], expected.membranes[0])
    np.testing.assert_array_equal(result.output_events, expected.output_events)


def test_a_response_over_the_limit_by_its_framing_alone_is_refused_by_the_daemon(daemon):
    one = make_dvs_events([1], [1], [0], [0])
    readout = Readout(bin_us=1, num_bins=100, membrane_layers=(0,))  # 51 KB of membranes from one event
    with ChipClient(daemon.address) as chip:
        result = chip.run(chip.deploy(small_spec()).model_id, [one], readout)
    arrays = (result.output_events, result.output_offsets, result.counters, *result.counts.values(),
              *result.membranes.values())  # fmt: skip
    settings = DaemonConfig(address="127.0.0.1:0", max_message_bytes=sum(a.nbytes for a in arrays), warm_up=False)
    with Daemon(settings) as tight, ChipClient(tight.address, retries=0) as chip:
        model = chip.deploy(small_spec()).model_id
        with pytest.raises(ResourceExhausted, match="for 1 samples: send fewer samples per call"):
            chip.run(model, [one], readout)  # said by the daemon, not by gRPC after the work
        assert chip.run(model, [one], Readout()).num_samples == 1


def wait_until_running(daemon: Daemon, events: int, seconds: float = 30.0) -> None:
    """Until the device runs a job of ``events`` events."""
    deadline = time.monotonic() + seconds
    while (job := daemon.scheduler.running) is None or job.size != events:
        assert time.monotonic() < deadline, "the long run never started"
        time.sleep(0.01)


def busy_but_quiet() -> NetworkSpec:
    """Much work per event (64 x 7 x 7 synapses), no spikes (+1/-1 rows never reach the threshold)."""
    weights = np.ones((64, 2, 7, 7), np.int8)
    weights[:, :, ::2] = -1
    return NetworkSpec(
        layers=(Layer(weights=weights, threshold_high=1000),), input=InputLayer(sensor_size=(34, 34), pool=(2, 2))
    )


@pytest.fixture(scope="module")
def busy_daemon():
    """One job may wait beside the running one."""
    with Daemon(DaemonConfig(address="127.0.0.1:0", max_queue=1, warm_up=False)) as d:
        yield d


def test_a_call_that_waits_past_its_deadline_is_deadline_exceeded_and_a_full_queue_refuses(
    busy_daemon, nmnist_samples
):
    with ChipClient(busy_daemon.address, retries=0, max_chunk_bytes=1 << 30, max_in_flight=1) as chip:
        model = chip.deploy(busy_but_quiet()).model_id
        assert chip.run(model, nmnist_samples[:1]).num_samples == 1
        long = nmnist_samples * 16  # 2.4 G synops: seconds
        first = chip.run_async(model, long, timeout=120)
        wait_until_running(busy_daemon, sum(s.size for s in long))
        with pytest.raises(DeadlineExceeded):
            chip.run(model, nmnist_samples[:1], timeout=0.3)
        # The abandoned job leaves the queue at its deadline on the server, which can be a
        # transit time later than the client's.
        deadline = time.monotonic() + 10
        while busy_daemon.scheduler.depth() > 0:
            assert time.monotonic() < deadline, "the abandoned job never left the queue"
            time.sleep(0.01)
        second = chip.run_async(model, nmnist_samples[:1], timeout=120)
        deadline = time.monotonic() + 10
        while busy_daemon.scheduler.depth() < 1:
            assert time.monotonic() < deadline, "the second run never queued"
            time.sleep(0.01)
        assert busy_daemon.scheduler.running is not None, "the long run ended too soon: make it longer"
        with grpc.insecure_channel(busy_daemon.address) as ch:  # the daemon refuses at once
            refused(
                lambda: pb_grpc.ChipStub(ch).Run(run_request(model, nmnist_samples[0]), timeout=10),
                grpc.StatusCode.RESOURCE_EXHAUSTED, "queue is full",
            )  # fmt: skip
        assert first.result(120).num_samples == 256 and second.result(120).num_samples == 1
        assert chip.run(model, nmnist_samples[:1]).num_samples == 1


# ------------------------------------------------------------------ config and life cycle


def test_config_precedence_is_flags_over_env_over_file(tmp_path):
    path = tmp_path / "chiploop.toml"
    path.write_text('workers = 3\nmax_queue = 7\n[daemon]\nbackend = "sim"\nsession_ttl_s = 5\n')
    env = {"CHIPLOOP_CONFIG": str(path), "CHIPLOOP_WORKERS": "2", "CHIPLOOP_ADDRESS": "0.0.0.0:6000"}
    settings = daemon_config.load({"workers": 4, "address": None}, env=env)
    assert (settings.workers, settings.max_queue, settings.address, settings.session_ttl_s) == (4, 7, "0.0.0.0:6000", 5.0)
    assert daemon_config.load({}, env=env).workers == 2


@pytest.mark.parametrize(
    ("flags", "env", "text", "match"),
    [
        ({}, {}, "wokers = 2\n", "wokers: unknown setting"),
        ({}, {}, "workers = 'many'\n", "workers: must be int"),
        ({}, {}, "workers = [\n", "not valid TOML"),
        ({}, {"CHIPLOOP_WORKERS": "two"}, "", "CHIPLOOP_WORKERS: must be int, got 'two'"),
        ({}, {}, b"workers = 2\n# \xff\xfe\n", "not valid TOML: 'utf-8' codec"),
        ({"address": "nowhere"}, {}, "", "address: must be HOST:PORT"),
        ({"workers": 0}, {}, "", "^flag --workers: must be >= 1"),
        ({"workers": 70000}, {}, "", "^flag --workers: must be 1..65536"),
        ({"parent_pid": 0}, {}, "", "^flag --parent-pid: must be a process id"),
        ({"grace_s": float("inf")}, {}, "", "^flag --grace-s: must be 0..604800 seconds"),
        ({"grace_s": 1e300}, {}, "", "grace-s: must be 0..604800 seconds"),
        ({}, {"CHIPLOOP_SESSION_TTL_S": "nan"}, "", "^CHIPLOOP_SESSION_TTL_S: must be 0..604800 seconds"),
        ({"log_level": "basic_format"}, {}, "", "log-level: must be one of DEBUG, INFO"),
        ({}, {"CHIPLOOP_LOG_LEVEL": "bogus"}, "", "^CHIPLOOP_LOG_LEVEL: must be one of"),
        ({}, {"CHIPLOOP_MAX_QUEUE": "0"}, "", "^CHIPLOOP_MAX_QUEUE: must be >= 1, got 0"),
        ({}, {}, "max_queue = 0\n", r"c\.toml: max_queue: must be >= 1, got 0"),
        ({"max_message_bytes": 100}, {}, "", "max-message-bytes: must be >= 4096 .GetInfo's answer must fit., got 100"),
        ({"port_file": "/nonexistent/folder/port"}, {}, "", "port-file: the folder /nonexistent/folder does not exist"),
        ({"port_file": "/tmp"}, {}, "", "port-file: /tmp is a folder"),
    ],
)
def test_bad_settings_are_refused_naming_where_they_came_from(tmp_path, flags, env, text, match):
    path = tmp_path / "c.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(InvalidArgument, match=match):
        daemon_config.load({**flags, "config": str(path)}, env=env)


def test_streams_are_never_more_than_sessions_so_a_small_max_sessions_alone_serves():
    with Daemon(DaemonConfig(address="127.0.0.1:0", max_sessions=2, warm_up=False)) as d:
        assert d.servicer.max_streams == 2  # each stream holds a session; threads are sized for 2


def test_serve_with_a_bad_setting_exits_2_with_the_reason(capsys):
    from chiploop.cli import main

    assert main(["serve", "--address", "127.0.0.1:0", "--workers", "0"]) == 2
    assert "workers: must be >= 1" in capsys.readouterr().err
    assert main(["serve", "--address", "127.0.0.1:0", "--parent-pid", str(os.getpid())]) == 2
    assert "parent_pid: " in capsys.readouterr().err  # this test process is not its own parent


def test_sigterm_lets_the_running_call_finish_then_exits_cleanly(nmnist_samples):
    from chiploop_server.local import LocalDaemon

    with LocalDaemon(extra_args=["--grace-s", "20"]) as local:
        with ChipClient(local.address, retries=0, max_chunk_bytes=1 << 30, max_in_flight=1) as chip:  # one call
            model = chip.deploy(busy_but_quiet()).model_id
            running = chip.run_async(model, nmnist_samples * 8, timeout=60)
            deadline = time.monotonic() + 30
            while not chip.info().device_busy:
                assert time.monotonic() < deadline, "the run never started"
                time.sleep(0.01)
            stopper = threading.Thread(target=local.stop)
            stopper.start()
            assert running.result(60).num_samples == 128
            stopper.join(30)
        assert local.process.returncode == 0
        assert local.port is None


def test_a_call_its_grace_cuts_off_says_so_to_the_client_and_in_the_log(tmp_path, nmnist_samples):
    """The client's retries ended on 'Connection refused', the daemon's answer lost; the daemon
    logged the cut as if its caller had cancelled."""
    import signal

    from chiploop.errors import BackendUnavailable
    from chiploop_server.local import LocalDaemon

    log = tmp_path / "daemon.log"
    with LocalDaemon(extra_args=["--grace-s", "0.5", "--no-warm-up"], log_path=log) as local:
        with ChipClient(local.address, retries=2, max_chunk_bytes=1 << 30, max_in_flight=1) as chip:
            model = chip.deploy(small_spec(threshold=1)).model_id
            chip.run(model, nmnist_samples[:1])  # compiled: the long run below is all compute
            done = {}

            def long_run() -> None:
                try:
                    chip.run(model, nmnist_samples * 40, timeout=120)
                except BackendUnavailable as exc:
                    done["error"] = str(exc)

            caller = threading.Thread(target=long_run)
            caller.start()
            time.sleep(1.0)
            local.process.send_signal(signal.SIGTERM)
            caller.join(60)
            assert local.process.wait(30) == 0
    assert "before that, the daemon answered: Cancelling all calls" in done.get("error", ""), done
    assert "(the daemon is stopping: its grace ended the call)" in log.read_text()


def test_a_second_sigterm_exits_at_once_without_waiting_for_the_grace():
    import signal

    from chiploop_server.local import LocalDaemon

    with LocalDaemon(extra_args=["--grace-s", "120", "--no-warm-up"]) as local:
        with ChipClient(local.address, retries=0) as chip:
            model = chip.deploy(small_spec()).model_id
            with chip.stream(model, Readout()):  # an open stream holds the graceful stop for the grace
                local.process.send_signal(signal.SIGTERM)
                with pytest.raises(subprocess.TimeoutExpired):
                    local.process.wait(1)
                local.process.send_signal(signal.SIGTERM)
                assert local.process.wait(30) == 128 + signal.SIGTERM


def _serve(tmp_path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """``chiploop serve`` in a child process, its log in tmp_path/log."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", **(env or {})}
    log = open(tmp_path / "log", "w")  # noqa: SIM115 - the child writes it; closed with the test's tmp_path
    return subprocess.Popen([sys.executable, "-m", "chiploop_server", "serve", *args], stdout=log, stderr=log, env=env)


def _wait_for(path, text: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in {path} after {timeout} s: {content}")


TYPO = "CHIPLOOP_" + "MAX_QEUE"  # spelled apart: the test below reads the code for CHIPLOOP_ names


def test_sighup_stops_gracefully_a_typo_in_the_environment_is_warned_of_and_the_port_file_goes(tmp_path):
    import signal

    port_file = tmp_path / "port"
    daemon = _serve(tmp_path, "--address", "127.0.0.1:0", "--no-warm-up", "--port-file", str(port_file),
                    "--max-sessions", "2", env={TYPO: "1"})  # fmt: skip
    try:
        _wait_for(tmp_path / "log", "serving backend sim")
        assert port_file.read_text().strip().isdigit()
        daemon.send_signal(signal.SIGHUP)
        assert daemon.wait(30) == 0
    finally:
        daemon.kill()
    log = (tmp_path / "log").read_text()
    assert f"{TYPO} is not a setting of the daemon (a typo?): ignored" in log
    assert "max_streams 16 is cut to max_sessions (2)" in log
    assert "SIGHUP: stopping" in log and "stopped" in log
    assert not port_file.exists(), "a stopped daemon's port file would send a reader to a dead port"


def test_a_daemon_started_to_ignore_sighup_nohup_keeps_ignoring_it(tmp_path):
    import signal

    daemon = subprocess.Popen(
        [sys.executable, "-m", "chiploop_server", "serve", "--address", "127.0.0.1:0", "--no-warm-up"],
        stdout=open(tmp_path / "log", "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),  # what nohup does
    )  # fmt: skip
    try:
        _wait_for(tmp_path / "log", "serving backend sim")
        daemon.send_signal(signal.SIGHUP)
        with pytest.raises(subprocess.TimeoutExpired):
            daemon.wait(1)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
    finally:
        daemon.kill()


def test_every_chiploop_variable_the_code_reads_is_known_to_the_daemon():
    """Else the daemon warns of it as a typo."""
    import re

    root = Path(__file__).resolve().parents[1]
    named = set()
    for folder in ("client", "server", "tests", "benchmarks"):
        for path in (root / folder).rglob("*.py"):
            named |= set(re.findall(r"CHIPLOOP_[A-Z][A-Z0-9_]*", path.read_text()))
    assert daemon_config.unknown_env(dict.fromkeys(named, "")) == []


def test_a_signal_during_the_warm_up_stops_the_daemon_before_it_ever_serves(tmp_path):
    """Compiling (a minute on a cold cache) held the main thread: the stop waited for it, then the
    daemon announced SERVING, wrote its port file, and only then stopped."""
    import signal

    port_file = tmp_path / "port"
    daemon = _serve(tmp_path, "--address", "127.0.0.1:0", "--port-file", str(port_file),
                    env={"NUMBA_CACHE_DIR": str(tmp_path / "cold")})  # fmt: skip
    try:
        _wait_for(tmp_path / "log", "compiling the backend's kernels")
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
    finally:
        daemon.kill()
    log = (tmp_path / "log").read_text()
    assert "stopped before serving" in log and "serving backend" not in log, log
    assert not port_file.exists()


def test_a_port_held_by_another_program_is_refused_by_name_and_reason(tmp_path):
    """gRPC binds a host name on whatever of its addresses it can: with 127.0.0.1:PORT held,
    `localhost:PORT` served on ::1 alone while clients of 127.0.0.1 reached the other program."""
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        for address in (f"127.0.0.1:{port}", f"localhost:{port}"):
            daemon = _serve(tmp_path, "--address", address, "--no-warm-up")
            try:
                assert daemon.wait(30) == 1
            finally:
                daemon.kill()
            log = (tmp_path / "log").read_text()
            assert f"cannot listen on 127.0.0.1:{port}" in log and "Address already in use" in log, log
            # localhost may be ::1 as well, listed first where IPv6 is configured
            assert ("localhost is " in log) == address.startswith("localhost"), log
            assert "Traceback" not in log


LISTEN_IN_NAMESPACE = """
import socket
from chiploop_server.config import DaemonConfig
from chiploop_server.daemon import Daemon
held = [socket.create_server(("127.0.0.2", p)) for p in range(47300, 47305)]  # half the ports, on one address
with Daemon(DaemonConfig(address=ADDRESS, warm_up=False)) as d:
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1"), (socket.AF_INET, "127.0.0.2")):
        with socket.socket(family) as s:
            print(host, "listening" if s.connect_ex((host, d.port)) == 0 else "refused")
"""


@pytest.mark.parametrize(
    ("hosts", "ipv6", "address", "expected"),
    [
        # port 0 on a name of two addresses: the port the kernel picks on one may be held on the other
        ("127.0.0.1 localhost\n127.0.0.1 multi\n127.0.0.2 multi\n", False, "multi:0",
         ["127.0.0.1 listening", "::1 refused", "127.0.0.2 listening"]),
        # localhost where IPv4 has only loopback: resolved without AI_ADDRCONFIG, 127.0.0.1 stays
        ("127.0.0.1 localhost\n::1 localhost\n", True, "localhost:47381",
         ["127.0.0.1 listening", "::1 listening", "127.0.0.2 refused"]),
    ],
)  # fmt: skip
def test_a_host_name_is_listened_on_at_each_of_its_addresses(tmp_path, hosts, ipv6, address, expected):
    """In a network namespace of its own (root and unshare needed) with its own /etc/hosts, and
    its ephemeral ports narrowed to ten, so that the kernel's pick is often held."""
    (tmp_path / "hosts").write_text(hosts)
    setup = "ip link set lo up && echo '47300 47309' > /proc/sys/net/ipv4/ip_local_port_range"
    setup += " && ip addr add fd00::1/64 dev lo" if ipv6 else ""
    script = LISTEN_IN_NAMESPACE.replace("ADDRESS", repr(address))
    command = f"{setup} && mount --bind {tmp_path / 'hosts'} /etc/hosts && exec {sys.executable} -c \"$0\""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "GRPC_VERBOSITY": "NONE"}
    try:
        done = subprocess.run(["unshare", "-n", "-m", "bash", "-c", command, script], capture_output=True,
                              text=True, timeout=60, env=env)  # fmt: skip
    except FileNotFoundError:
        pytest.skip("no unshare here")
    if done.returncode != 0 and ("unshare failed" in done.stderr or "Operation not permitted" in done.stderr):
        pytest.skip(f"no network namespace here: {done.stderr.strip()[-200:]}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:3] == expected, done.stdout


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's new parent may be slow to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_local_daemon_stops_when_its_trainer_is_killed():
    trainer = (
        "import time\n"
        "from chiploop_server.local import LocalDaemon\n"
        "daemon = LocalDaemon(extra_args=['--no-warm-up']).start()\n"
        "print(daemon.process.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", trainer], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        assert _running(pid)
    finally:
        parent.kill()  # SIGKILL: no clean-up runs in the trainer
        parent.wait()
    deadline = time.monotonic() + 30
    while _running(pid):
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            pytest.fail("the daemon outlived its killed parent")
        time.sleep(0.1)
    # Its temporary folder (the log) outlives them both, until the next LocalDaemon starts.
    from chiploop_server.local import OWNER_FILE, remove_orphaned_folders

    folders = [f for f in Path(tempfile.gettempdir()).glob("chiploop-daemon-*")
               if (f / OWNER_FILE).is_file() and (f / OWNER_FILE).read_text().strip() == str(parent.pid)]  # fmt: skip
    assert len(folders) == 1 and not (folders[0] / "port").exists()  # the daemon removed its port file
    remove_orphaned_folders()
    assert not folders[0].exists()


def test_a_live_local_daemons_folder_is_never_swept_whoever_runs_the_sweep():
    """The sweep asks the folder's lock, not whether a pid runs: another PID namespace sharing /tmp
    (containers) cannot see the owner's pid, and took a live daemon's folder."""
    from chiploop_server.local import LocalDaemon, remove_orphaned_folders

    with LocalDaemon(extra_args=["--no-warm-up"]) as local:
        folder = local.log_path.parent
        remove_orphaned_folders()
        assert (folder / "daemon.log").exists()
        sweep = [sys.executable, "-c", "from chiploop_server.local import remove_orphaned_folders as r; r()"]
        if subprocess.run(["unshare", "-p", "-f", "true"], capture_output=True).returncode == 0:
            sweep = ["unshare", "-p", "-f", *sweep]  # a PID namespace of its own: no pid of ours is seen there
        assert subprocess.run(sweep, timeout=60).returncode == 0
        assert (folder / "daemon.log").exists()
    assert not folder.exists()  # its own clean-up


def test_a_trainer_whose_local_daemon_dies_is_told_so_at_once_and_the_log_is_kept(tmp_path, nmnist_samples):
    """It retried a dead daemon for 30 s, then said only 'Connection refused'; the log went with its folder."""
    import signal

    from chiploop.errors import BackendUnavailable
    from chiploop.training.chip import open_chip

    log = tmp_path / "daemon.log"
    with pytest.raises(BackendUnavailable, match=r"the local daemon exited \(status -9\) \(its log: .*daemon.log\)"):
        with open_chip((), log_path=log) as chip:
            chip.deploy(small_spec())
            pid = int(log.read_text().rpartition("(pid ")[2].partition(")")[0])
            os.kill(pid, signal.SIGKILL)
            started = time.monotonic()
            chip.run(nmnist_samples[:2], Readout())
    assert time.monotonic() - started < 10
    assert "serving backend sim" in log.read_text()


def test_a_local_daemon_whose_start_is_interrupted_is_stopped():
    """Ctrl-C in a notebook while the daemon starts: __exit__ never runs, and the daemon, in a
    session of its own, never sees the Ctrl-C."""
    import signal

    from chiploop_server.local import LocalDaemon

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    local = LocalDaemon(extra_args=["--no-warm-up"])
    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    try:
        with pytest.raises(KeyboardInterrupt):
            local.start()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert local.process is not None and local.process.poll() is not None, "the daemon outlived the interrupt"


def test_a_local_daemon_has_its_own_process_group(daemon):
    """A Ctrl-C in the trainer's terminal reaches the trainer, which checkpoints at the next batch
    and needs its daemon until then."""
    assert os.getpgid(daemon.process.pid) != os.getpgrp()


def test_info_and_health_commands(daemon, capsys):
    from chiploop.cli import main

    assert main(["info", daemon.address]) == 0
    out = capsys.readouterr().out
    assert "backend       sim" in out and "9 cores" in out
    assert main(["health", daemon.address]) == 0
    assert "SERVING" in capsys.readouterr().out
    # No address: the daemon's own setting, a wildcard host asked on loopback (a container's health check).
    port = daemon.address.rpartition(":")[2]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CHIPLOOP_ADDRESS", f"0.0.0.0:{port}")
        assert main(["health"]) == 0
    assert f"127.0.0.1:{port}: SERVING" in capsys.readouterr().out


def test_info_of_an_absent_daemon_fails_with_unavailable(capsys):
    from chiploop.cli import main

    assert main(["info", "127.0.0.1:1", "--timeout", "2"]) == 1
    assert "BackendUnavailable" in capsys.readouterr().err


def test_info_health_and_demo_refuse_bad_arguments_in_one_line(daemon, capsys):
    from chiploop.cli import main

    assert main(["info", "127.0.0.1:116836"]) == 1
    assert "address: must be HOST:PORT with a port 1..65535" in capsys.readouterr().err
    for timeout in ("0", "-3", "nan", "1e300"):
        assert main(["health", daemon.address, "--timeout", timeout]) == 2
        assert "timeout: must be a number of seconds" in capsys.readouterr().err
    assert main(["demo", daemon.address, "--samples", "0"]) == 1
    assert "samples: must be 1.." in capsys.readouterr().err


def test_every_error_class_has_its_status_code_and_anything_else_is_internal():
    from chiploop.errors import ERROR_CLASSES
    from chiploop_server.transport import status_of

    for name, cls in ERROR_CLASSES.items():
        error = cls("f", "bad") if issubclass(cls, InvalidArgument) else cls("bad")
        assert status_of(error)[0] == getattr(grpc.StatusCode, name)
    code, message = status_of(ZeroDivisionError("division by zero"))
    assert code == grpc.StatusCode.INTERNAL
    assert "ZeroDivisionError: division by zero" in message and "traceback" in message


def test_the_demo_runs_against_a_daemon(daemon, capsys):
    from chiploop.cli import main

    assert main(["demo", daemon.address, "--samples", "2"]) == 0
    out = capsys.readouterr().out
    assert "outputs changed with the weights in 2 of 2 samples" in out
    assert "stream counts equal run 1's for sample 0: True" in out


# ------------------------------------------------------------------ calls that end, stops, a busy device


class EndingContext:
    """gRPC's side of a call, as the servicer sees it: ``end()`` is the call ending (the caller
    cancelled, its deadline passed, the server stopped), which runs the callbacks gRPC was given."""

    def __init__(self, ended: bool = False) -> None:
        self.ended = ended
        self.callbacks: list = []

    def add_callback(self, callback) -> bool:
        if self.ended:
            return False  # gRPC's answer for a call already over
        self.callbacks.append(callback)
        return True

    def time_remaining(self):
        return None

    def end(self) -> None:
        self.ended = True
        for callback in self.callbacks:
            callback()


def hold_device(daemon: Daemon) -> threading.Event:
    """Keep the device's worker inside a job until the returned event is set."""
    started, release = threading.Event(), threading.Event()

    def payload(device):
        started.set()
        release.wait(60)

    daemon.scheduler.submit(Job("run", "holder", payload))
    assert started.wait(10)
    return release


@pytest.fixture
def idle_daemon():
    """A daemon that is built but does not serve: its servicer, scheduler and device are used directly."""
    d = Daemon(DaemonConfig(address="127.0.0.1:0", warm_up=False))
    yield d
    d.stop(grace=0)


def test_a_call_that_ended_before_its_job_was_queued_queues_nothing(idle_daemon):
    ran = []
    with pytest.raises(Cancelled, match="the call ended before the run was queued"):
        idle_daemon.servicer._do(EndingContext(ended=True), "run", "u", lambda device: ran.append(1))
    time.sleep(0.3)
    assert ran == [] and idle_daemon.scheduler.depth() == 0


@pytest.mark.parametrize("state", ["queued", "running"])
def test_a_call_that_ends_drops_its_queued_job_and_stops_waiting_for_a_running_one(idle_daemon, state):
    release = hold_device(idle_daemon) if state == "queued" else None
    started, finish = threading.Event(), threading.Event()

    def payload(device):
        started.set()
        finish.wait(60)
        return "done"

    context, outcome = EndingContext(), []

    def call():
        try:
            outcome.append(idle_daemon.servicer._do(context, "run", "u", payload))
        except Exception as exc:  # noqa: BLE001 - what the handler would answer
            outcome.append(exc)

    handler = threading.Thread(target=call)
    handler.start()
    if state == "running":
        assert started.wait(10)
    else:
        wait_for(lambda: idle_daemon.scheduler.depth() == 1, "the job never queued")
    context.end()
    handler.join(5)
    assert not handler.is_alive(), "the handler still waits for a job nobody will read"
    assert isinstance(outcome[0], Cancelled) and f"while the run was {state}" in str(outcome[0])
    if release is not None:
        release.set()
        time.sleep(0.3)
        assert not started.is_set(), "the dropped job ran"
    finish.set()


def test_stop_returns_and_does_not_close_a_device_still_inside_a_job(monkeypatch, caplog):
    from chiploop_server import daemon as daemon_module

    monkeypatch.setattr(daemon_module, "WORKER_JOIN_S", 0.3)
    d = Daemon(DaemonConfig(address="127.0.0.1:0", warm_up=False))
    d.start()
    release = hold_device(d)
    try:
        t0 = time.monotonic()
        with caplog.at_level("WARNING", logger="chiploop.daemon"):
            d.stop(grace=0)
        assert time.monotonic() - t0 < 5
        assert "not closing it under that job" in caplog.text
    finally:
        release.set()
    assert d.scheduler.stop(timeout=5), "the worker did not end after its job"


def test_a_failed_start_stops_the_server_and_the_device_worker(tmp_path):
    (tmp_path / "gone").mkdir()
    d = Daemon(DaemonConfig(address="127.0.0.1:0", port_file=str(tmp_path / "gone" / "port"), warm_up=False))
    (tmp_path / "gone").rmdir()  # after its check: the port file cannot be written once the server serves
    with pytest.raises(FileNotFoundError):
        d.start()
    assert d.scheduler.stop(timeout=5), "the device's worker outlived the failed start"
    with grpc.insecure_channel(f"127.0.0.1:{d.port}") as ch:
        with pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)


def test_every_waiting_job_has_a_thread_so_the_queue_refuses_and_health_still_answers(nmnist_samples):
    """The queue, not gRPC's thread pool, bounds the waiting calls; health checks get a thread."""
    with Daemon(DaemonConfig(address="127.0.0.1:0", max_queue=24, max_streams=1, warm_up=False)) as d:
        with ChipClient(d.address) as chip:
            model = chip.deploy(small_spec(threshold=8)).model_id
        release = hold_device(d)
        try:
            with grpc.insecure_channel(d.address) as ch:
                stub = pb_grpc.ChipStub(ch)
                request = run_request(model, nmnist_samples[0])
                waiting = [stub.Run.future(request, timeout=60) for _ in range(24)]
                wait_for(lambda: d.scheduler.depth() == 24, "24 runs never queued")
                refused(lambda: stub.Run(request, timeout=10), grpc.StatusCode.RESOURCE_EXHAUSTED, "queue is full")
                reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
                assert pb_grpc.ChipStub(ch).GetInfo(pb.GetInfoRequest(), timeout=5).queue_depth == 24
                release.set()
                assert all(wire.decode_run_result(f.result(60)).num_samples == 1 for f in waiting)
        finally:
            release.set()


def test_a_full_queue_does_not_refuse_a_streams_chunk_which_would_end_the_stream(nmnist_samples):
    """Other users' Runs fill the queue; the open stream's next chunk waits its turn instead."""
    sample = nmnist_samples[0]
    with Daemon(DaemonConfig(address="127.0.0.1:0", max_queue=1, warm_up=False)) as d:
        with ChipClient(d.address) as chip, grpc.insecure_channel(d.address) as ch:
            model = chip.deploy(small_spec(threshold=8)).model_id
            stream = chip.stream(model, Readout())
            stream.send(sample[:100])
            release = hold_device(d)
            try:
                queued = pb_grpc.ChipStub(ch).Run.future(run_request(model, sample), timeout=60)
                wait_for(lambda: d.scheduler.depth() == 1, "the run never queued")
                fed = concurrent.futures.ThreadPoolExecutor(1).submit(stream.send, sample[100:200])
                wait_for(lambda: d.scheduler.depth() == 2, "the chunk was not queued")
                release.set()
                fed.result(30)  # before: RESOURCE_EXHAUSTED, and the stream was over
                assert wire.decode_run_result(queued.result(30)).num_samples == 1
                stream.send(sample[200:300])
                stream.close()
                assert chip.read_outputs(stream.session_id).counters[0] == 300
            finally:
                release.set()


def test_a_stream_that_never_opens_gives_its_place_back(monkeypatch):
    """A peer that starts StreamEvents and sends nothing must not hold a max_streams place."""
    from chiploop_server import transport

    monkeypatch.setattr(transport, "STREAM_OPEN_TIMEOUT_S", 0.5)
    with Daemon(DaemonConfig(address="127.0.0.1:0", max_streams=1, warm_up=False)) as d:
        with ChipClient(d.address) as chip, grpc.insecure_channel(d.address) as ch:
            model = chip.deploy(small_spec()).model_id
            requests: queue.Queue = queue.Queue()  # stays empty: the stream never opens
            silent = pb_grpc.ChipStub(ch).StreamEvents(iter(requests.get, None), timeout=30)
            with pytest.raises(grpc.RpcError) as err:
                next(silent)
            assert err.value.code() == grpc.StatusCode.CANCELLED
            requests.put(None)
            with chip.stream(model, Readout()) as stream:  # the one place is free again
                stream.send(make_dvs_events([1], [1], [0], [0]))


def wait_for(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)
