"""The chip as the trainer sees it: one or more daemons, one batch split across them.

``ChipPool`` deploys the same network on every daemon, pushes incremental
weight updates to each, and splits a batch into contiguous chunks (one per
daemon) whose results come back concatenated in order. ``open_chip`` starts a
local daemon with the simulator when no address is given.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Protocol

import numpy as np

from chiploop.errors import BackendUnavailable, ChiploopError, FailedPrecondition, InvalidArgument, NotFound
from chiploop.limits import apply_layer_updates
from chiploop.run import Readout, RunResult
from chiploop.spec import NetworkSpec

#: UNAVAILABLE answers a daemon's client tries again after (backoff 0.1 s doubling to 2 s): about
#: 30 s, long enough for a daemon restart (a few seconds) not to end a training run.
RESTART_RETRIES = 20

#: ... and those to a local daemon this process started (about 0.7 s).
LOCAL_RETRIES = 3

#: How long a pool waits for each daemon to answer when it is made.
CONNECT_TIMEOUT_S = 10.0

#: How long one batch may take on a daemon, queue included (a board runs ~0.3 s per N-MNIST
#: sample in real time, and a shared chip has a queue): past it the trainer fails, not hangs.
BATCH_TIMEOUT_S = 600.0


if TYPE_CHECKING:
    from chiploop.client import ChipClient


class Chip(Protocol):
    """What the methods need from a chip: ChipPool (daemons) and InProcessChip both are one."""

    addresses: tuple[str, ...]

    @property
    def model_id(self) -> str: ...
    def deploy(self, spec: NetworkSpec) -> str: ...
    def update_weights(self, weights: dict[int, np.ndarray | dict]) -> str: ...
    def run_async(self, samples: list[np.ndarray], readout: Readout) -> PendingRun: ...
    def run(self, samples: list[np.ndarray], readout: Readout) -> RunResult: ...
    def close(self) -> None: ...


def contiguous_spans(n: int, parts: int) -> list[tuple[int, int]]:
    """``[a, b)`` bounds of at most ``parts`` contiguous, near-equal chunks of ``n`` samples."""
    bounds = np.linspace(0, n, min(parts, max(n, 1)) + 1).round().astype(int)
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))


class PendingRun:
    """The futures of one batch's chunks; ``result()`` joins them in order, once, and
    ``waited_s`` keeps how long that first call waited (the chip time torch did not hide)."""

    def __init__(self, futures: list[Future]) -> None:
        self._futures = futures
        self._result: RunResult | None = None
        self.waited_s = 0.0

    def result(self, timeout: float | None = None) -> RunResult:
        if self._result is None:
            started = time.perf_counter()
            self._result = RunResult.concatenate([f.result(timeout=timeout) for f in self._futures])
            self.waited_s = time.perf_counter() - started
        return self._result

    def done(self) -> bool:
        return all(f.done() for f in self._futures)


class ChipPool:
    """Several daemons used as one chip (a batch is split across them).

    It keeps the network it deployed, with every update applied, so that a daemon that lost it
    (evicted by other users' models on a shared daemon, or restarted) gets it deployed again: a
    NOT_FOUND is answered by deploying the current network (content-hashed: the same id) and
    trying once more. A daemon that is briefly unavailable (a restart) is waited for.
    """

    def __init__(self, addresses: Sequence[str], retries: int = RESTART_RETRIES) -> None:
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

        from chiploop.client import ChipClient  # noqa: PLC0415 - grpc only where a chip is used

        if not addresses:
            raise InvalidArgument("chip", "needs at least one daemon address")
        self.addresses = tuple(addresses)
        self.clients = [ChipClient(a, timeout=BATCH_TIMEOUT_S, retries=retries) for a in self.addresses]
        for client in self.clients:  # a mistyped address fails now, not after a restart's patience
            try:
                client.info(timeout=CONNECT_TIMEOUT_S)
            except ChiploopError:
                self.close_clients()
                raise
        self.model_ids: list[str] = []
        self.spec: NetworkSpec | None = None  # as deployed, with every update since
        self._runs = ThreadPoolExecutor(max_workers=len(self.clients), thread_name_prefix="chiploop-pool")

    @property
    def model_id(self) -> str:
        if not self.model_ids:
            raise FailedPrecondition("no network deployed on the chip yet")
        return self.model_ids[0]

    def deploy(self, spec: NetworkSpec) -> str:
        self.model_ids = [c.deploy(spec).model_id for c in self.clients]
        self.spec = spec
        return self.model_id

    def update_weights(self, weights: dict[int, np.ndarray | dict]) -> str:
        """Incremental update of the deployed network (same ids on every daemon: content hashes)."""
        from chiploop.wire import normalize_updates  # noqa: PLC0415 - protobuf only where a daemon is used

        if not self.model_ids or self.spec is None:
            raise FailedPrecondition("update_weights before any deploy")
        spec, _ = apply_layer_updates(self.spec, normalize_updates(weights))
        ids = []
        for client, model_id in zip(self.clients, self.model_ids, strict=True):
            try:
                ids.append(client.update_weights(model_id, weights))
            except NotFound:  # the base is gone from that daemon: deploy the whole network there
                ids.append(client.deploy(spec).model_id)
        # Only once every daemon holds it: a failed update leaves the pool as it was.
        self.spec, self.model_ids = spec, ids
        return self.model_id

    def _run_on(self, client: ChipClient, model_id: str, spec: NetworkSpec, samples: list[np.ndarray],
                readout: Readout) -> RunResult:  # fmt: skip
        """One daemon's chunk on the network as it was when the batch was submitted."""
        try:
            return client.run(model_id, samples, readout=readout)
        except NotFound:  # content-hashed: deploying ``spec`` again gives ``model_id`` back
            return client.run(client.deploy(spec).model_id, samples, readout=readout)

    def run_async(self, samples: list[np.ndarray], readout: Readout) -> PendingRun:
        """Start the batch on every daemon (one contiguous chunk each) and return at once."""
        if not self.model_ids or self.spec is None:
            raise FailedPrecondition("run before any deploy")
        spans = contiguous_spans(len(samples), len(self.clients))
        return PendingRun([
            self._runs.submit(self._run_on, self.clients[k], self.model_ids[k], self.spec, samples[a:b], readout)
            for k, (a, b) in enumerate(spans)
        ])  # fmt: skip

    def run(self, samples: list[np.ndarray], readout: Readout) -> RunResult:
        return self.run_async(samples, readout).result()

    def close(self) -> None:
        self._runs.shutdown(wait=True)
        self.close_clients()

    def close_clients(self) -> None:
        for c in self.clients:
            c.close()


class InProcessChip:
    """The simulator in this process, no daemon, no gRPC (``--chip inprocess``).

    Same verbs as ChipPool; runs go to one background thread (the simulator's
    kernels release the GIL, so a run overlaps the torch forward here too).
    """

    def __init__(self, workers: int = 1) -> None:
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

        from chiploop_server.sim import SimNetwork, run_batch  # noqa: PLC0415 - server package, optional here

        self._sim_network, self._run_batch = SimNetwork, run_batch
        self.workers = workers
        self.addresses = ("inprocess",)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chiploop-sim")
        self._net = None

    @property
    def model_id(self) -> str:
        if self._net is None:
            raise FailedPrecondition("no network deployed on the chip yet")
        return self._net.spec.content_hash()

    def deploy(self, spec: NetworkSpec) -> str:
        self._net = self._sim_network.from_spec(spec)
        return self.model_id

    def update_weights(self, weights: dict[int, np.ndarray | dict]) -> str:
        if self._net is None:
            raise FailedPrecondition("update_weights before any deploy")
        self._net = self._net.with_updates(
            {int(k): dict(w) if isinstance(w, dict) else {"weights": w} for k, w in weights.items()}
        )
        return self.model_id

    def run_async(self, samples: list[np.ndarray], readout: Readout) -> PendingRun:
        if self._net is None:
            raise FailedPrecondition("run before any deploy")
        from chiploop.run import pack_samples  # noqa: PLC0415

        events, offsets = pack_samples(samples)
        return PendingRun([self._pool.submit(self._run_batch, self._net, events, offsets, readout, self.workers)])

    def run(self, samples: list[np.ndarray], readout: Readout) -> RunResult:
        return self.run_async(samples, readout).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


IN_PROCESS = "inprocess"


@contextlib.contextmanager
def open_chip(
    addresses: Sequence[str] = (), workers: int = 1, log_path: str | os.PathLike | None = None
) -> Iterator[Chip]:
    """A ChipPool on the given daemons, the in-process simulator (address ``inprocess``),
    or, with no address, a local daemon with the simulator (started here, stopped after; its log
    goes to ``log_path``, kept, else to a temporary folder that goes with it)."""
    with contextlib.ExitStack() as stack:
        if tuple(addresses) == (IN_PROCESS,):
            chip = InProcessChip(workers)
            stack.callback(chip.close)
            yield chip
            return
        if IN_PROCESS in addresses:
            raise InvalidArgument("chip", f"{IN_PROCESS!r} cannot be mixed with daemon addresses")
        daemon = None
        if not addresses:
            from chiploop_server.local import LocalDaemon  # noqa: PLC0415 - only when no daemon is given

            daemon = stack.enter_context(LocalDaemon(backend="sim", workers=workers, log_path=log_path))
            addresses = (daemon.address,)
        # A local daemon that stops answering has died (nothing restarts it): retrying for 30 s
        # would only delay saying so.
        pool = ChipPool(addresses, retries=RESTART_RETRIES if daemon is None else LOCAL_RETRIES)
        stack.callback(pool.close)
        try:
            yield pool
        except BackendUnavailable as exc:
            # The client only sees a refused connection: say that the daemon is gone, and why.
            status = daemon.process.poll() if daemon is not None else None
            if status is None:
                raise
            kept = f" (its log: {daemon.log_path})" if log_path else ""
            raise BackendUnavailable(
                f"the local daemon exited (status {status}){kept}: {exc}\n{daemon.log_tail()}"
            ) from None
