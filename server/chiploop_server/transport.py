"""The gRPC servicer: decode -> validate -> submit a job -> encode. Nothing else lives here.

Every chiploop.errors exception becomes its class's status code with the
exception's message (which names the field); anything else becomes INTERNAL with
a message, is logged with its traceback, and the daemon keeps serving.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
from chiploop import wire
from chiploop.errors import (
    Cancelled,
    ChiploopError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unauthenticated,
)
from chiploop.events import CHIP_EVENT_DTYPE, DVS_EVENT_DTYPE, check_dvs_events
from chiploop.run import COUNTER_NAMES
from chiploop.v1 import chiploop_pb2 as pb
from chiploop.v1 import chiploop_pb2_grpc as pb_grpc

from chiploop_server.devices.base import Device
from chiploop_server.jobs import Job, deadline_from
from chiploop_server.refusal_log import RefusalLog
from chiploop_server.registry import Registry
from chiploop_server.scheduler import Scheduler
from chiploop_server.sessions import SessionEntry, SessionStore

log = logging.getLogger("chiploop.transport")

#: How often a handler waiting for its job looks whether its call has ended.
CALL_POLL_S = 0.25

#: How long a stream may hold one of the max_streams places before its `open` arrives: a peer
#: that connects and says nothing would otherwise hold it for as long as its connection lives.
STREAM_OPEN_TIMEOUT_S = 30.0

ANONYMOUS = "anonymous"

_CHIP_EVENTS_DTYPE = wire.dtype_to_str(CHIP_EVENT_DTYPE)

#: A bound on what an array of chip events adds to a message beyond its data: the Array's dtype
#: and (largest) shape, and the tags and length prefixes (at most 5 bytes each) of it and its data.
EVENTS_FRAMING_BYTES = pb.Array(dtype=_CHIP_EVENTS_DTYPE, shape=[2**31]).ByteSize() + 12

#: A generous bound on a response's bytes beyond its arrays' data (ids, numbers, dtypes, shapes): a
#: quick first check, before encoding; only a response within it of the limit is measured exactly.
FRAMING_BOUND_BYTES = 256

OUTPUT_EVENTS = COUNTER_NAMES.index("output_events")


#: The longest status message, in UTF-8 bytes: messages quote what the caller sent (an id, a
#: dtype), which may be megabytes; the whole would be logged and would overflow the status's
#: metadata (16 KiB: gRPC then answers RESOURCE_EXHAUSTED in place of the real code).
MAX_STATUS_BYTES = 2000


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message an exception is answered with."""
    if isinstance(exc, ChiploopError):
        code, message = getattr(grpc.StatusCode, exc.grpc_code_name, grpc.StatusCode.INTERNAL), str(exc)
    else:
        code = grpc.StatusCode.INTERNAL
        message = f"internal error ({type(exc).__name__}: {exc}); the daemon's log has the traceback"
    return code, cut_message(message)


def cut_message(message: str, limit: int = MAX_STATUS_BYTES) -> str:
    """``message`` within ``limit`` UTF-8 bytes (and a note), its head and tail kept whole characters."""
    data = message.encode("utf-8", "replace")
    if len(data) <= limit:
        return message
    head = data[: limit // 2].decode("utf-8", "ignore")
    tail = data[-(limit // 2) :].decode("utf-8", "ignore")
    return f"{head} ...[{len(data) - limit} bytes cut]... {tail}"


def user_of(context: grpc.ServicerContext) -> str:
    """Who asks: from ``authorization: Bearer <token>`` metadata (no auth yet; the name is recorded).

    The token itself is never stored or logged, only a short hash of it.
    """
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
            return "token-" + hashlib.sha256(token.strip().encode()).hexdigest()[:12]
    return ANONYMOUS


def _answer_errors(method: Callable) -> Callable:
    """Turn exceptions of a unary method into gRPC statuses."""

    @functools.wraps(method)
    def wrapper(self: ChipServicer, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - every failure is answered, none kills the daemon
            code, message = self._failed(method.__name__, exc, context)
        context.abort(code, message)

    return wrapper


def _answer_stream_errors(method: Callable) -> Callable:
    """The same for a method that yields its responses."""

    @functools.wraps(method)
    def wrapper(self: ChipServicer, request_iterator: Any, context: grpc.ServicerContext) -> Iterator:
        try:
            yield from method(self, request_iterator, context)
            return
        except grpc.RpcError:  # reading the client's messages failed: it cancelled, no one to answer
            return
        except Exception as exc:  # noqa: BLE001
            code, message = self._failed(method.__name__, exc, context)
        context.abort(code, message)

    return wrapper


def _required(parent: Any, name: str, field: str | None = None) -> Any:
    if not parent.HasField(name):
        raise InvalidArgument(field or name, "missing")
    return getattr(parent, name)


class _CallWatch:
    """Whether the RPC has ended (cancelled, deadline, server stopping), and the job it waits for now.

    One per call (a stream's jobs share it: gRPC keeps callbacks, and each chunk's output with them,
    until the end). When the call ends, the job is dropped if it still waits in the queue, and the
    handler stops waiting for it: a stopping server must not keep its threads on jobs nobody reads.
    """

    def __init__(self, context: grpc.ServicerContext) -> None:
        self.ended = threading.Event()
        self.future: concurrent.futures.Future | None = None
        if not context.add_callback(self.end):
            self.end()  # the call ended before we could watch it (cancelled while being decoded)

    def end(self) -> None:
        self.ended.set()
        future = self.future
        if future is not None:
            future.cancel()

    def watch(self, future: concurrent.futures.Future) -> None:
        self.future = future
        if self.ended.is_set():  # ended between submit and now: end() saw the previous future
            future.cancel()


class ChipServicer(pb_grpc.ChipServicer):
    def __init__(
        self,
        device: Device,
        registry: Registry,
        scheduler: Scheduler,
        sessions: SessionStore,
        *,
        server_version: str,
        backends_available: list[str],
        max_message_bytes: int,
        workers: int,
        max_streams: int = 16,
    ) -> None:
        self.device = device
        self.registry = registry
        self.scheduler = scheduler
        self.sessions = sessions
        self.server_version = server_version
        self.backends_available = list(backends_available)
        self.max_message_bytes = max_message_bytes
        self.workers = workers
        self.max_streams = max_streams
        self._streams = threading.BoundedSemaphore(max_streams)
        self.refusals = RefusalLog(log)
        #: Set by the daemon when it stops: the calls its grace cuts off end for that, not their callers.
        self.stopping = threading.Event()

    # ------------------------------------------------------------ plumbing

    def _failed(self, rpc: str, exc: BaseException, context: grpc.ServicerContext) -> tuple[grpc.StatusCode, str]:
        code, message = status_of(exc)
        if code == grpc.StatusCode.CANCELLED and self.stopping.is_set():
            message += " (the daemon is stopping: its grace ended the call)"
        try:
            user = user_of(context)
        except Unauthenticated:
            user = "an unauthenticated caller"
        self.refusals.record(rpc, code, user, message, peer=context.peer(), exc=exc)
        return code, message

    def _do(
        self, context: grpc.ServicerContext, kind: str, user: str, payload: Callable[[Device], Any], size: int = 0,
        call: _CallWatch | None = None, reserved: bool = False,
    ) -> Any:
        """Run ``payload`` on the device's worker within the caller's deadline; return its result."""
        call = call if call is not None else _CallWatch(context)
        if call.ended.is_set():
            raise Cancelled(f"the call ended before the {kind} was queued")
        job = Job(kind, user, payload, deadline_from(context.time_remaining()), size=size, reserved=reserved)
        future = self.scheduler.submit(job)
        call.watch(future)
        try:
            return self._wait(job, future, call)
        finally:
            # A failed job's exception is held by its future, and its traceback holds this frame
            # (and _wait's, and the handler's, through `call`): drop the links, or the cycle keeps the
            # request (a refused chunk: megabytes) alive until a full garbage collection.
            call.future = None
            job = future = None

    @staticmethod
    def _wait(job: Job, future: concurrent.futures.Future, call: _CallWatch) -> Any:
        try:
            while True:
                # In slices, to notice the call ending while the job runs; a result returns at once.
                timeout = CALL_POLL_S if job.deadline is None else min(CALL_POLL_S, job.deadline - time.monotonic())
                try:
                    return future.result(timeout=max(0.0, timeout))
                except ChiploopError:
                    raise
                except concurrent.futures.TimeoutError:
                    state = "running" if future.running() else "queued"
                    if job.expired():
                        raise DeadlineExceeded(f"the deadline passed while the {job.kind} was {state}") from None
                    if call.ended.is_set():
                        raise Cancelled(f"the call ended while the {job.kind} was {state}") from None
                except concurrent.futures.CancelledError:
                    raise Cancelled(f"the call ended while the {job.kind} was queued") from None
        finally:
            job = future = None  # see _do

    # ------------------------------------------------------------ models

    @_answer_errors
    def GetInfo(self, request: pb.GetInfoRequest, context: grpc.ServicerContext) -> pb.GetInfoResponse:
        user_of(context)
        info = self.device.info()
        response = pb.GetInfoResponse(
            backend=info["backend"],
            chip_model=info["chip_model"],
            server_version=self.server_version,
            protocol_version=wire.PROTOCOL_VERSION,
            backends_available=self.backends_available,
            max_message_bytes=self.max_message_bytes,
            workers=self.workers,
            models_deployed=len(self.registry),
            queue_depth=self.scheduler.depth(),
            sessions_open=len(self.sessions),
            device_busy=self.scheduler.running is not None,
        )
        wire.encode_limits(info["limits"], response.limits)
        return response

    @_answer_errors
    def Deploy(self, request: pb.DeployRequest, context: grpc.ServicerContext) -> pb.DeployResponse:
        user_of(context)
        spec = wire.decode_network(_required(request, "network"))
        model, cached = self.registry.deploy(spec)
        return pb.DeployResponse(model_id=model.model_id, cores=model.cores, cached=cached)

    @_answer_errors
    def UpdateWeights(
        self, request: pb.UpdateWeightsRequest, context: grpc.ServicerContext
    ) -> pb.UpdateWeightsResponse:
        user_of(context)
        updates = wire.decode_updates(request.updates)
        model, _ = self.registry.update(request.model_id, updates)
        return pb.UpdateWeightsResponse(model_id=model.model_id)

    @_answer_errors
    def Run(self, request: pb.RunRequest, context: grpc.ServicerContext) -> pb.RunResponse:
        t0 = time.perf_counter()
        user = user_of(context)
        model = self.registry.get(request.model_id)
        readout = wire.decode_readout(request.readout)
        readout.check(len(model.spec.layers))
        events = wire.decode_array(_required(request, "events"), "events", dtype=DVS_EVENT_DTYPE, ndim=1)
        offsets = wire.decode_array(_required(request, "offsets"), "offsets", dtype=np.dtype("<i8"), ndim=1)
        t1 = time.perf_counter()
        # Refused here, before the job takes a place in the queue; the device checks again
        # because it is also called in-process (about 2 ms per 4 MiB, off the hot path's scale).
        check_dvs_events(events, model.spec.input.sensor_size, "events", offsets=offsets)
        t2 = time.perf_counter()
        result = self._do(
            context, "run", user, lambda device: device.run(model.handle, events, offsets, readout), size=events.size
        )
        t3 = time.perf_counter()
        # Said by the daemon rather than by gRPC; the client halves its chunk on "message larger than
        # max". The data alone is checked before encoding (no copy of what cannot go); the encoded
        # message is measured (ByteSize serializes it: 1.3 ms per 4 MiB) only near the limit.
        arrays = (result.output_events, result.output_offsets, result.counters, *result.counts.values(),
                  *result.membranes.values())  # fmt: skip
        data = sum(int(np.asarray(a).nbytes) for a in arrays)
        self._check_response_size(data, offsets.size - 1)
        response = wire.encode_run_result(result, model.model_id)
        if data + FRAMING_BOUND_BYTES * (len(arrays) + 1) > self.max_message_bytes:
            self._check_response_size(response.ByteSize(), offsets.size - 1)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "Run %s: %d samples, %d events; decode %.2f ms, checks %.2f ms, device %.2f ms "
                "(compute %.2f ms), encode %.2f ms",
                model.model_id[:8], offsets.size - 1, events.size, 1e3 * (t1 - t0), 1e3 * (t2 - t1),
                1e3 * (t3 - t2), 1e3 * result.compute_seconds, 1e3 * (time.perf_counter() - t3),
            )  # fmt: skip
        return response

    def _events_that_fit(self, other_bytes: int) -> int:
        """How many chip events one answer carries beside ``other_bytes`` of its other fields (the
        encoded size of the answer without them); call it only with events to send."""
        room = self.max_message_bytes - other_bytes
        count = max(0, (room - EVENTS_FRAMING_BYTES) // CHIP_EVENT_DTYPE.itemsize)
        while _events_field_bytes(count + 1) <= room:  # the bound errs by a few bytes: one event at most
            count += 1
        if count == 0:
            raise ResourceExhausted(
                f"response message larger than max: max_message_bytes ({self.max_message_bytes}) leaves no room "
                f"for output events beside the answer's other {other_bytes} bytes; run the daemon with a larger "
                "max_message_bytes"
            )
        return count

    def _check_response_size(self, size: int, samples: int) -> None:
        if size > self.max_message_bytes:
            raise ResourceExhausted(
                f"response message larger than max ({size} vs. {self.max_message_bytes} bytes) for "
                f"{samples} samples: send fewer samples per call"
            )

    # ------------------------------------------------------------ stream sessions

    @_answer_stream_errors
    def StreamEvents(self, request_iterator: Iterator[pb.StreamRequest], context: grpc.ServicerContext) -> Iterator:
        user = user_of(context)
        if not self._streams.acquire(blocking=False):
            raise ResourceExhausted(f"{self.max_streams} streams are open (the daemon's max_streams); retry later")
        entry: SessionEntry | None = None
        call = _CallWatch(context)
        try:
            silent = threading.Timer(STREAM_OPEN_TIMEOUT_S, _cancel_silent_stream, (context, user))
            silent.daemon = True
            silent.start()
            try:
                first = next(request_iterator, None)
            finally:
                silent.cancel()
            if first is None:
                return
            if first.WhichOneof("body") != "open":
                raise InvalidArgument("open", "the first message of a stream must be `open` (model id and readout)")
            model = self.registry.get(first.open.model_id)
            paged = first.open.paged
            readout = wire.decode_readout(first.open.readout)
            readout.check(len(model.spec.layers))
            keep = self.sessions.max_kept_events
            session = self._do(
                context, "open", user, lambda device: device.open_session(model.handle, readout, keep), call=call,
                reserved=True,
            )
            entry = self.sessions.add(
                user, model.model_id, readout, model.spec.input.sensor_size, len(model.spec.layers), session
            )
            yield pb.StreamResponse(session_id=entry.session_id)
            for request in request_iterator:
                if request.WhichOneof("body") != "events":
                    raise InvalidArgument("open", "a stream is opened once; every later message carries events")
                events = wire.decode_array(request.events, "events", dtype=DVS_EVENT_DTYPE, ndim=1)
                check_dvs_events(events, entry.sensor_size, "events")
                out = self._do(
                    context, "feed", user, functools.partial(_feed, entry, events), size=events.size, call=call,
                    reserved=True,
                )
                # A paged stream gets the chunk's spikes in as many messages as they need (`more` on
                # all but the last); any other, one message or, past the limit, an error by name.
                fields = pb.StreamResponse(session_id=entry.session_id, events_in=entry.events_in)
                page = max(1, out.size)
                if out.size and out.size > self._events_that_fit(fields.ByteSize()):
                    if not paged:
                        raise ResourceExhausted(
                            f"response message larger than max: the chunk caused {out.size} chip events, more "
                            f"than one message holds (max_message_bytes {self.max_message_bytes}); the chunk "
                            "was taken. Send smaller chunks, or open the stream with paged answers "
                            "(StreamOpen.paged)"
                        )
                    fields.more = True
                    page = self._events_that_fit(fields.ByteSize())
                for start in range(0, max(out.size, 1), page):
                    response = pb.StreamResponse(
                        session_id=entry.session_id, events_in=entry.events_in, more=start + page < out.size
                    )
                    wire.encode_array(out[start : start + page], response.output_events, "output_events")
                    yield response
        finally:
            if entry is not None:
                self.sessions.end_stream(entry.session_id)
            self._streams.release()

    @_answer_errors
    def ReadOutputs(self, request: pb.SessionRequest, context: grpc.ServicerContext) -> pb.ReadOutputsResponse:
        user = user_of(context)
        entry = self.sessions.get(request.session_id, user)

        paged, asked = request.HasField("from_event"), request.from_event
        if asked < 0:
            raise InvalidArgument("from_event", f"must be >= 0, got {asked}")

        def read(device: Device) -> tuple:
            # One job: the page, the counts and the reset count all describe one state of the session
            # (the counts are encoded here, as the room left for the page depends on their size).
            s = entry.session
            counts, counters = s.counts(), np.asarray(s.counters(), np.int64)
            total, oldest = int(counters[OUTPUT_EVENTS]), s.first_kept_event
            start = oldest if request.from_oldest and asked < oldest else asked
            if start > total:
                raise FailedPrecondition(
                    f"from_event {start} is past the session's {total} output events (was it reset while "
                    "they were read?)"
                )
            if start < oldest:
                raise FailedPrecondition(
                    f"the session keeps its newest {self.sessions.max_kept_events} output events (the daemon's "
                    f"max_session_events), events {start}..{oldest - 1} of its {total} are gone: ask from_event "
                    f">= {oldest}, or set from_oldest to start at the oldest kept (a client from before this "
                    "bound cannot read them: upgrade chiploop)"
                )
            response = pb.ReadOutputsResponse(total_events=total, resets=entry.resets, first_event=start)
            wire.encode_layer_arrays(counts, response.counts, "counts")
            wire.encode_array(counters, response.counters, "counters")
            beside = response.ByteSize()
            if beside + _events_field_bytes(0) > self.max_message_bytes:
                raise ResourceExhausted(
                    f"response message larger than max: the session's counts and counters alone take {beside} "
                    f"bytes (max_message_bytes {self.max_message_bytes}); open the stream with fewer bins or "
                    "without spatial_counts, or run the daemon with a larger max_message_bytes"
                )
            room = self._events_that_fit(beside) if start < total else 0
            if not paged and total > room:
                raise ResourceExhausted(
                    f"response message larger than max: the session holds {total} output events, one message "
                    f"holds {room} (max_message_bytes {self.max_message_bytes}); read them in pages "
                    "(SessionRequest.from_event)"
                )
            return response, s.output_events(start, start + room)

        response, events = self._do(context, "read_outputs", user, read)
        wire.encode_array(events, response.output_events, "output_events")  # the large copy: off the device
        return response

    @_answer_errors
    def ReadMembranes(self, request: pb.SessionRequest, context: grpc.ServicerContext) -> pb.ReadMembranesResponse:
        user = user_of(context)
        entry = self.sessions.get(request.session_id, user)
        layers = tuple(request.layers) or entry.readout.membrane_layers
        if not layers:
            raise InvalidArgument("layers", "name the layers to read (the session's readout names none)")
        for layer in layers:
            if not 0 <= layer < entry.num_layers:
                raise InvalidArgument("layers", f"no layer {layer} (network has {entry.num_layers})")
        membranes = self._do(context, "read_membranes", user, lambda device: entry.session.membranes(layers))
        response = pb.ReadMembranesResponse()
        wire.encode_layer_arrays(membranes, response.membranes, "membranes")
        if (size := response.ByteSize()) > self.max_message_bytes:  # a layer's state: small, cheap to measure
            raise ResourceExhausted(
                f"response message larger than max: the membranes of layers {list(layers)} take {size} bytes "
                f"(max_message_bytes {self.max_message_bytes}); read fewer layers per call (SessionRequest.layers)"
            )
        return response

    @_answer_errors
    def Reset(self, request: pb.ResetRequest, context: grpc.ServicerContext) -> pb.ResetResponse:
        user = user_of(context)
        entry = self.sessions.get(request.session_id, user)
        self._do(context, "reset", user, functools.partial(_reset, entry))
        return pb.ResetResponse()


def _events_field_bytes(count: int) -> int:
    """The encoded size of an output_events field holding ``count`` chip events, exactly."""
    data = count * CHIP_EVENT_DTYPE.itemsize
    array = pb.Array(dtype=_CHIP_EVENTS_DTYPE, shape=[count]).ByteSize()
    return wire.field_bytes(array + (wire.field_bytes(data) if data else 0))


def _cancel_silent_stream(context: grpc.ServicerContext, user: str) -> None:
    # From a timer thread, where abort() cannot be called: the peer sees CANCELLED.
    log.info("a stream of user %s sent no `open` within %.0f s: cancelled", user, STREAM_OPEN_TIMEOUT_S)
    context.cancel()


# Session state changes run on the device's worker thread, so they never race each other.


def _feed(entry: SessionEntry, events: np.ndarray, device: Device) -> np.ndarray:
    if events.size and events["t"][0] < entry.last_t:
        raise InvalidArgument(
            "events[0].t",
            f"goes back in time: {events['t'][0]} is before {entry.last_t}, the newest event this session took",
        )
    out = entry.session.feed(events)
    entry.events_in += int(events.size)
    if events.size:
        entry.last_t = int(events["t"][-1])
    return out


def _reset(entry: SessionEntry, device: Device) -> None:
    entry.session.reset()
    entry.resets += 1
    entry.events_in = 0
    entry.last_t = -1
