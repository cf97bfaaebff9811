"""ChipClient: the trainer's handle on a chip daemon (numpy in, numpy out).

    with ChipClient("127.0.0.1:50051") as chip:
        model = chip.deploy(spec)
        result = chip.run(model.model_id, samples, readout=Readout(bin_us=60_000, num_bins=5))
        new_id = chip.update_weights(model.model_id, {5: int8_weights})

Every server refusal surfaces as the matching chiploop.errors exception carrying
the server's message (which names the field). Idempotent calls (GetInfo, Deploy,
UpdateWeights, Run and the session reads) are retried with exponential backoff
when the daemon is UNAVAILABLE. A large batch is cut at sample boundaries into
chunks of at most ``max_chunk_bytes`` (request, and estimated response), sent
several at a time, and the results joined in order.
"""

from __future__ import annotations

import os
import queue
import random
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np

from chiploop import wire
from chiploop.errors import (
    CONGESTION,
    ERROR_CLASSES,
    BackendUnavailable,
    Cancelled,
    ChiploopError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
)
from chiploop.events import (
    CHIP_EVENT_DTYPE,
    DVS_EVENT_DTYPE,
    check_dvs_layout,
    check_offsets,
    concatenate_events,
)
from chiploop.limits import ChipLimits
from chiploop.run import Readout, RunResult, pack_samples
from chiploop.spec import NetworkSpec
from chiploop.v1 import chiploop_pb2 as pb
from chiploop.v1 import chiploop_pb2_grpc as pb_grpc

T = TypeVar("T")

#: Bytes one DVS event takes on the wire.
EVENT_BYTES = DVS_EVENT_DTYPE.itemsize

#: The longest wait between two retries, in seconds (before jitter).
MAX_BACKOFF_S = 2.0

#: Batches larger than this are cut into about max_in_flight chunks, to pipeline them.
MIN_PIPELINED_CHUNK = 512 << 10

CHANNEL_OPTIONS = [
    # The daemon enforces its own message limit; the client takes whatever it sends.
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    # gRPC's own reconnect backoff grows to 2 minutes, during which calls fail at once without
    # trying; keep it short so that the client's retries can find a daemon that has just come up.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


@dataclass(frozen=True)
class ChipInfo:
    backend: str
    chip_model: str
    server_version: str
    protocol_version: int
    limits: ChipLimits
    backends_available: tuple[str, ...]
    max_message_bytes: int
    workers: int
    models_deployed: int
    queue_depth: int
    sessions_open: int
    device_busy: bool = False


@dataclass(frozen=True)
class Deployment:
    model_id: str
    cores: tuple[int, ...]  # the core of each layer
    cached: bool  # the daemon had this network already


def error_from_rpc(exc: grpc.RpcError, address: str = "") -> ChiploopError:
    """The chiploop.errors exception of a failed call, with the server's message."""
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
    name = code.name if code is not None else "UNKNOWN"
    cls = ERROR_CLASSES.get(name)
    if cls is None:
        return ChiploopError(f"{name}: {details}")
    if issubclass(cls, InvalidArgument):
        # The server's message is "field: what is wrong"; keep the field for callers that branch on it.
        field, sep, message = details.partition(": ")
        return InvalidArgument(field, message) if sep and " " not in field else InvalidArgument("", details)
    if cls is BackendUnavailable and address:
        return BackendUnavailable(f"{address}: {details}")
    return cls(details)


#: The environment variable a client takes its bearer token from when given none.
ENV_TOKEN = "CHIPLOOP_TOKEN"

#: The longest timeout a call takes (about three years): gRPC reads a larger one as expired.
MAX_TIMEOUT_S = 1e8


def checked_timeout(seconds: float) -> float:
    """A deadline in seconds: gRPC takes NaN, a negative number or a huge one as already expired,
    which would read as the daemon's fault."""
    if not 0 < seconds <= MAX_TIMEOUT_S:
        raise InvalidArgument("timeout", f"must be a number of seconds in (0, {MAX_TIMEOUT_S:g}], got {seconds}")
    return float(seconds)


def check_address(address: str) -> str:
    """A daemon's address: HOST:PORT with a port gRPC can reach (it wraps 65536 to 0 silently),
    or one of gRPC's own target forms (``unix:PATH``, ``dns:///HOST:PORT``, ``ipv4:A:P,B:P``, ...),
    whose ports are held to the same range."""
    if not isinstance(address, str) or not address.strip():
        raise InvalidArgument("address", f"must be HOST:PORT, got {address!r}")
    scheme, colon, rest = address.partition(":")
    if scheme in ("dns", "ipv4", "ipv6") and colon:
        if rest.startswith("//"):  # dns://AUTHORITY/HOST:PORT
            rest = rest[2:].partition("/")[2]
        for endpoint in rest.split(","):
            port = endpoint.rpartition(":")[2] if not endpoint.endswith("]") else ""
            if port.isdigit() and not 0 < int(port) <= 65535:
                raise InvalidArgument("address", f"port {port} of {address!r} is not 1..65535")
        return address
    if "://" in address or scheme in ("unix", "unix-abstract", "vsock", "xds") and colon:
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise InvalidArgument("address", f"must be HOST:PORT with a port 1..65535, got {address!r}")
    return address


class ChipClient:
    """A connection to one chip daemon; thread-safe; also a context manager."""

    def __init__(
        self,
        address: str,
        token: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        max_chunk_bytes: int = 4 << 20,
        max_in_flight: int = 4,
        backoff_s: float = 0.1,
    ) -> None:
        if max_chunk_bytes < EVENT_BYTES:
            raise InvalidArgument("max_chunk_bytes", f"must be >= {EVENT_BYTES}, got {max_chunk_bytes}")
        wire.tune_malloc()
        self.address = check_address(address)
        self.timeout = checked_timeout(timeout)
        self.retries = max(0, int(retries))
        self.max_chunk_bytes = int(max_chunk_bytes)
        self.max_in_flight = max(1, int(max_in_flight))
        if not 0 < backoff_s <= MAX_BACKOFF_S:
            raise InvalidArgument("backoff_s", f"must be in (0, {MAX_BACKOFF_S}] seconds, got {backoff_s}")
        self.backoff_s = float(backoff_s)
        # From the environment by default: every entry point (train, eval, experiment, info) gets it,
        # and it stays out of command lines, config.json and checkpoints.
        token = os.environ.get(ENV_TOKEN) or None if token is None else token
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.ChipStub(self._channel)
        # Run takes requests already encoded (wire.encode_run_request: the events copied once).
        self._run_encoded = self._channel.unary_unary(
            f"/{wire.SERVICE_NAME}/Run",
            request_serializer=None,
            response_deserializer=pb.RunResponse.FromString,
        )
        self._specs: OrderedDict[str, NetworkSpec] = OrderedDict()  # to estimate response sizes
        self._specs_lock = threading.Lock()
        self._chunk_pool: ThreadPoolExecutor | None = None
        self._async_pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._channel_closed = False

    def __repr__(self) -> str:
        return f"ChipClient({self.address!r})"

    # ------------------------------------------------------------ calls

    def _deadline(self, timeout: float | None) -> float:
        """The monotonic time a call must end by: ``timeout`` bounds the whole call, retries and
        chunks included (default: the client's timeout)."""
        return time.monotonic() + (self.timeout if timeout is None else checked_timeout(timeout))

    def _call(self, method: Callable[..., T], request: Any, deadline: float, idempotent: bool = True) -> T:
        """``method(request)`` within ``deadline``. An idempotent call is tried again after a backoff:
        up to ``retries`` times when the daemon is unavailable, and as long as the deadline allows
        when it is congested (its device queue is full, or it holds all the calls it has threads
        for: a shared chip, or this client's own chunks)."""
        unavailable = waits = 0
        first_answer = ""  # what the daemon said before it went away: the retries' last error will not say it

        def failed(error: ChiploopError) -> ChiploopError:
            if first_answer and isinstance(error, (BackendUnavailable, DeadlineExceeded)) and first_answer not in str(error):
                return type(error)(f"{error} (before that, the daemon answered: {first_answer})")
            return error

        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise failed(DeadlineExceeded(f"{self.address}: the call's timeout passed before attempt {waits + 1}"))
            try:
                return method(request, timeout=remaining, metadata=self._metadata)
            except ValueError:
                if self._channel_closed:  # grpc's refusal to use a closed channel, between two retries
                    raise Cancelled(f"{self.address}: the client was closed during the call") from None
                raise
            except grpc.RpcError as exc:
                code = exc.code()
                details = exc.details() or ""
                congested = code == grpc.StatusCode.RESOURCE_EXHAUSTED and any(c in details for c in CONGESTION)
                if code == grpc.StatusCode.UNAVAILABLE and not first_answer and "connect" not in details.lower():
                    first_answer = details
                if code == grpc.StatusCode.UNAVAILABLE and unavailable < self.retries:
                    unavailable += 1
                elif not congested:
                    raise failed(error_from_rpc(exc, self.address)) from None
                if not idempotent:
                    raise error_from_rpc(exc, self.address) from None
                delay = min(MAX_BACKOFF_S, self.backoff_s * (2**waits))
                delay *= 0.5 + random.random()  # jitter: clients that failed together retry apart
                waits += 1
                if time.monotonic() + delay >= deadline:  # no time is left to try again in
                    raise failed(error_from_rpc(exc, self.address)) from None
                time.sleep(delay)

    def info(self, timeout: float | None = None) -> ChipInfo:
        r = self._call(self._stub.GetInfo, pb.GetInfoRequest(), self._deadline(timeout))
        return ChipInfo(
            backend=r.backend,
            chip_model=r.chip_model,
            server_version=r.server_version,
            protocol_version=r.protocol_version,
            limits=wire.decode_limits(r.limits),
            backends_available=tuple(r.backends_available),
            max_message_bytes=r.max_message_bytes,
            workers=r.workers,
            models_deployed=r.models_deployed,
            queue_depth=r.queue_depth,
            sessions_open=r.sessions_open,
            device_busy=r.device_busy,
        )

    def deploy(self, spec: NetworkSpec, timeout: float | None = None) -> Deployment:
        """Send a network (int8 weights); the daemon validates it against the chip and keeps it."""
        if not isinstance(spec, NetworkSpec):
            raise InvalidArgument("spec", f"must be a chiploop.spec.NetworkSpec, got {type(spec).__name__}")
        request = pb.DeployRequest()
        wire.encode_network(spec, request.network)
        r = self._call(self._stub.Deploy, request, self._deadline(timeout))
        self._remember(r.model_id, spec)
        return Deployment(model_id=r.model_id, cores=tuple(r.cores), cached=r.cached)

    def update_weights(self, model_id: str, updates: Mapping[int, Any], timeout: float | None = None) -> str:
        """The id of the model with some layers changed: ``{layer: int8 weights}`` or
        ``{layer: {"weights": .., "leak": .., "threshold_high": .., "threshold_low": ..}}``."""
        request = pb.UpdateWeightsRequest(model_id=model_id)
        wire.encode_updates(updates, request.updates)
        r = self._call(self._stub.UpdateWeights, request, self._deadline(timeout))
        with self._specs_lock:
            spec = self._specs.get(model_id)
        if spec is not None:  # same shapes: the size estimate carries over
            self._remember(r.model_id, spec)
        return r.model_id

    def _remember(self, model_id: str, spec: NetworkSpec) -> None:
        with self._specs_lock:
            self._specs[model_id] = spec
            self._specs.move_to_end(model_id)
            while len(self._specs) > 64:
                self._specs.popitem(last=False)

    # ------------------------------------------------------------ runs

    def run(
        self,
        model_id: str,
        samples: list[np.ndarray] | tuple[np.ndarray, np.ndarray] | np.ndarray,
        readout: Readout | None = None,
        timeout: float | None = None,
    ) -> RunResult:
        """Run a batch: a list of per-sample DVS event arrays, or packed ``(events, offsets)``
        (one array alone is one sample). Each sample starts from zero states. ``timeout`` bounds
        the whole batch, every chunk and retry included."""
        readout = Readout() if readout is None else readout
        events, offsets = pack_batch(samples)
        template = pb.RunRequest(model_id=model_id)
        wire.encode_readout(readout, template.readout)
        deadline = self._deadline(timeout)
        bounds = self._chunk_bounds(model_id, offsets, readout)
        if len(bounds) == 1:
            return self._run_chunk(template, events, offsets, 0, offsets.size - 1, deadline)
        pool = self._pool("_chunk_pool", self.max_in_flight)
        futures = [pool.submit(self._run_chunk, template, events, offsets, a, b, deadline) for a, b in bounds]
        try:
            return RunResult.concatenate([f.result() for f in futures])
        except BaseException:
            # A chunk failed, or the caller was interrupted: the chunks not yet sent are not sent.
            for f in futures:
                f.cancel()
            raise

    def run_async(
        self,
        model_id: str,
        samples: list[np.ndarray] | tuple[np.ndarray, np.ndarray] | np.ndarray,
        readout: Readout | None = None,
        timeout: float | None = None,
    ) -> Future:
        """``run`` in the background: a Future of the RunResult (overlap the chip with your own work)."""
        return self._pool("_async_pool", 4).submit(self.run, model_id, samples, readout, timeout)

    def _run_chunk(
        self, template: pb.RunRequest, events: np.ndarray, offsets: np.ndarray, a: int, b: int, deadline: float
    ) -> RunResult:
        lo, hi = int(offsets[a]), int(offsets[b])
        request = wire.encode_run_request(template, events[lo:hi], offsets[a : b + 1] - lo)
        try:
            response = self._call(self._run_encoded, request, deadline)
        except ResourceExhausted as exc:
            # A response over the daemon's message limit (outputs are not known in advance):
            # halve the chunk until it fits, or one sample alone is too big.
            if b - a > 1 and "message" in str(exc).lower() and "larger than" in str(exc).lower():
                mid = (a + b) // 2
                return RunResult.concatenate(
                    [
                        self._run_chunk(template, events, offsets, a, mid, deadline),
                        self._run_chunk(template, events, offsets, mid, b, deadline),
                    ]
                )
            raise
        return wire.decode_run_result(response, writable=True)

    def _chunk_bounds(self, model_id: str, offsets: np.ndarray, readout: Readout) -> list[tuple[int, int]]:
        """Sample ranges [a, b) whose request (and known part of the response) fit max_chunk_bytes.

        A batch over MIN_PIPELINED_CHUNK bytes is also cut into about ``max_in_flight``
        chunks, so that sending one overlaps the daemon computing another (measured on
        64 N-MNIST samples: transport 19-27 ms in one call, 12-16 ms in 512 KiB chunks).
        """
        n = offsets.size - 1
        if n <= 1:
            return [(0, max(n, 0))]
        cost = np.diff(offsets) * EVENT_BYTES + self._response_bytes_per_sample(model_id, readout)
        limit = min(self.max_chunk_bytes, max(MIN_PIPELINED_CHUNK, -(-int(cost.sum()) // self.max_in_flight)))
        bounds, a, total = [], 0, 0
        for i in range(n):
            if i > a and total + cost[i] > limit:
                bounds.append((a, i))
                a, total = i, 0
            total += int(cost[i])
        bounds.append((a, n))
        return bounds

    def _response_bytes_per_sample(self, model_id: str, readout: Readout) -> int:
        """Counts, membranes and counters of one sample (output events are not known in advance)."""
        with self._specs_lock:
            spec = self._specs.get(model_id)
        if spec is None:
            return 0
        try:
            shapes = [out for _, out in spec.layer_shapes()]
        except ChiploopError:
            return 0
        recorded = set(spec.output_layers) | set(spec.monitor)
        t = readout.num_bins
        size = 8 * (4 + len(shapes))
        for layer in recorded:
            f, h, w = shapes[layer]
            size += 4 * t * (f * h * w if readout.spatial_counts else f)
        for layer in readout.membrane_layers:
            if 0 <= layer < len(shapes):
                f, h, w = shapes[layer]
                size += 2 * t * f * h * w
        return size

    def _pool(self, name: str, workers: int) -> ThreadPoolExecutor:
        with self._pool_lock:
            pool = getattr(self, name)
            if pool is None:
                pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"chiploop-client{name}")
                setattr(self, name, pool)
            return pool

    # ------------------------------------------------------------ stream sessions

    def stream(self, model_id: str, readout: Readout | None = None, timeout: float | None = None) -> ChipStream:
        """Open a stream session: ``send`` chunks of events, read outputs and membranes, reset.

        ``timeout`` bounds the whole stream (default: none); each send waits at most
        the client's timeout for its answer.
        """
        return ChipStream(self, model_id, Readout() if readout is None else readout, timeout)

    def read_outputs(self, session_id: str, timeout: float | None = None) -> SessionOutputs:
        """Every output event the session keeps (its newest ``max_session_events`` since it opened
        or was reset; ``first_event`` numbers the first one), its counts and counters. More events
        than one message holds come in pages, all within ``timeout``. Counts and counters are those
        of the first page: events a stream adds meanwhile are left for the next read."""
        deadline = self._deadline(timeout)
        request = pb.SessionRequest(session_id=session_id, from_event=0, from_oldest=True)
        first = self._call(self._stub.ReadOutputs, request, deadline)
        pages = [_output_events(first)]
        have = first.first_event + pages[0].size
        while have < first.total_events:
            request = pb.SessionRequest(session_id=session_id, from_event=have, from_oldest=True)
            r = self._call(self._stub.ReadOutputs, request, deadline)
            if r.resets != first.resets:  # the pages would join outputs from before and after it
                raise FailedPrecondition(f"session {session_id} was reset while its outputs were read")
            if r.first_event > have:  # from_oldest moved the page on: the stream's feeding dropped them
                raise FailedPrecondition(
                    f"session {session_id}: output events {have}..{r.first_event - 1} were dropped while the "
                    "outputs were read (its stream fed past the daemon's max_session_events); read again"
                )
            pages.append(_output_events(r))
            if pages[-1].size == 0:  # never spin, whatever a daemon answers
                raise FailedPrecondition(f"session {session_id}: no output events from {have} on")
            have += pages[-1].size
        return SessionOutputs(
            output_events=concatenate_events(pages)[: max(first.total_events - first.first_event, pages[0].size)],
            counts={k: np.array(v) for k, v in wire.decode_layer_arrays(first.counts, "counts", np.dtype("<i4")).items()},
            counters=np.array(wire.decode_array(first.counters, "counters", np.dtype("<i8"), 1)),
            first_event=first.first_event,
        )

    def read_membranes(
        self, session_id: str, layers: tuple[int, ...] = (), timeout: float | None = None
    ) -> dict[int, np.ndarray]:
        request = pb.SessionRequest(session_id=session_id, layers=[int(x) for x in layers])
        r = self._call(self._stub.ReadMembranes, request, self._deadline(timeout))
        return {k: np.array(v) for k, v in wire.decode_layer_arrays(r.membranes, "membranes", np.dtype("<i2")).items()}

    def reset(self, session_id: str, timeout: float | None = None) -> None:
        self._call(self._stub.Reset, pb.ResetRequest(session_id=session_id), self._deadline(timeout))

    # ------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Cancel the ``run_async`` calls not yet started, wait for those under way (and for the
        chunks of a ``run`` another thread has under way), close the channel."""
        # The async runs first: one under way still needs the chunk pool, and may create it, so
        # each pool is looked up only once the one before it has drained.
        for name, cancel in (("_async_pool", True), ("_chunk_pool", False)):
            with self._pool_lock:
                pool = getattr(self, name)
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=cancel)
        self._channel_closed = True
        self._channel.close()

    def __enter__(self) -> ChipClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class SessionOutputs:
    """What a session produced since it opened or was reset: counts and counters of everything,
    the output events it keeps (the newest ``max_session_events`` of the daemon)."""

    output_events: np.ndarray  # CHIP_EVENT_DTYPE
    counts: dict[int, np.ndarray]  # per output / monitored layer: int32 [T, f] (or [T, f, H, W])
    counters: np.ndarray  # int64 [4 + layers]: chiploop.run.COUNTER_NAMES, then spikes per layer
    first_event: int = 0  # the number of output_events[0]: events before it are no longer kept


_END = object()


def _output_events(response: pb.ReadOutputsResponse | pb.StreamResponse) -> np.ndarray:
    """An answer's chip events, as an array of the caller's own (writable)."""
    return np.array(wire.decode_array(response.output_events, "output_events", CHIP_EVENT_DTYPE, 1))


class ChipStream:
    """One StreamEvents call: the session it opened stays readable after ``close`` (until it expires)."""

    def __init__(self, client: ChipClient, model_id: str, readout: Readout, timeout: float | None) -> None:
        self._client = client
        self._requests: queue.Queue = queue.Queue()
        self._closed = False
        opening = pb.StreamRequest()
        opening.open.model_id = model_id
        opening.open.paged = True  # send() joins an answer given in several messages
        wire.encode_readout(readout, opening.open.readout)
        self._requests.put(opening)
        # gRPC reads the requests in a thread of its own, blocked on the queue until _END arrives:
        # a stream dropped without close() must still end it (the finalizer holds the queue, not self).
        weakref.finalize(self, self._requests.put, _END)
        self._call = client._stub.StreamEvents(
            iter(self._requests.get, _END),
            timeout=None if timeout is None else checked_timeout(timeout),
            metadata=client._metadata,
        )
        first = self._next()
        self.session_id: str = first.session_id
        self.events_in = 0

    def _next(self) -> pb.StreamResponse:
        """The daemon's next answer, within the client's timeout (gRPC has no per-message one:
        past it the stream is cancelled)."""
        expired = threading.Event()
        timer = None
        if self._client.timeout is not None:
            timer = threading.Timer(self._client.timeout, lambda: (expired.set(), self._call.cancel()))
            timer.daemon = True
            timer.start()
        try:
            return next(self._call)
        except grpc.RpcError as exc:
            self._end()
            if expired.is_set():
                raise DeadlineExceeded(
                    f"no answer from {self._client.address} within the client's timeout of {self._client.timeout} s; "
                    "the stream was cancelled (its session stays readable by id)"
                ) from None
            raise error_from_rpc(exc, self._client.address) from None
        except StopIteration:
            self._end()
            raise FailedPrecondition("the daemon ended the stream") from None
        finally:
            if timer is not None:
                timer.cancel()

    def _end(self) -> None:
        self._closed = True
        self._requests.put(_END)

    def send(self, events: np.ndarray) -> np.ndarray:
        """Feed the next time-sorted chunk of DVS events; the chip events it caused."""
        if self._closed:
            raise FailedPrecondition("the stream is closed (read the session with read_outputs / read_membranes)")
        check_dvs_layout(events, "events")
        request = pb.StreamRequest()
        wire.encode_array(events, request.events, "events")
        self._requests.put(request)
        pages = []
        while True:  # more than one message holds come in several, `more` set on all but the last
            response = self._next()
            pages.append(_output_events(response))
            if not response.more:
                break
        self.events_in = response.events_in
        return concatenate_events(pages)

    def read_outputs(self, timeout: float | None = None) -> SessionOutputs:
        return self._client.read_outputs(self.session_id, timeout)

    def read_membranes(self, layers: tuple[int, ...] = (), timeout: float | None = None) -> dict[int, np.ndarray]:
        """Current int16 [f, H, W] states (default: the readout's membrane layers)."""
        return self._client.read_membranes(self.session_id, tuple(layers), timeout)

    def reset(self, timeout: float | None = None) -> None:
        """Zero the session's states and forget its outputs (the stream stays open)."""
        self._client.reset(self.session_id, timeout)

    def close(self) -> None:
        """End the stream (the session stays readable by id until it expires)."""
        if self._closed:
            return
        self._end()
        try:
            for _ in self._call:  # the server answers every chunk before it sees the end
                pass
        except grpc.RpcError:
            pass

    def __enter__(self) -> ChipStream:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None and not self._closed:
            self._call.cancel()
            self._end()
        self.close()

    def __iter__(self) -> Iterator:  # a stream is not an iterable of responses; be explicit about it
        raise TypeError("use send(events) to feed a ChipStream")


def pack_batch(samples: Any) -> tuple[np.ndarray, np.ndarray]:
    """(events, offsets) from a list of samples, a packed pair, or one sample's array."""
    if isinstance(samples, np.ndarray):
        samples = [samples]
    if isinstance(samples, tuple) and len(samples) == 2 and isinstance(samples[1], np.ndarray) and (
        samples[1].dtype.names is None
    ):
        events, offsets = samples
        check_dvs_layout(events, "events")
        offsets = np.asarray(offsets)
        if offsets.dtype.kind not in "iu" or offsets.ndim != 1:
            raise InvalidArgument("offsets", f"must be a 1-D integer array [n + 1], got {offsets.dtype} {offsets.shape}")
        offsets = offsets.astype(np.int64, copy=False)
        check_offsets(offsets, events.size)  # the client cuts the batch by them: a bad cut would lose events
        return events, offsets
    samples = list(samples)
    for i, sample in enumerate(samples):
        check_dvs_layout(sample, f"samples[{i}]")
    if len(samples) == 1:  # no copy: the wire encoder copies once anyway
        return samples[0], np.array([0, samples[0].size], np.int64)
    return pack_samples(samples)
