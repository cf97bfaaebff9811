"""Build and run the gRPC daemon: the Chip service, health checking, reflection, graceful stop."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
from chiploop.errors import InvalidArgument
from chiploop.v1 import chiploop_pb2_grpc
from chiploop.wire import SERVICE_NAME, tune_malloc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from chiploop_server.config import DaemonConfig
from chiploop_server.devices import Device, available_backends, open_device
from chiploop_server.registry import Registry
from chiploop_server.scheduler import Scheduler
from chiploop_server.sessions import SessionStore
from chiploop_server.transport import ChipServicer

log = logging.getLogger("chiploop.daemon")

#: Server threads beyond those the queue and the streams can hold (GetInfo, health, Deploy, reads).
RESERVED_THREADS = 16

#: How long stop() waits for the job on the device to end, after the server's grace.
WORKER_JOIN_S = 5.0


def server_version() -> str:
    try:
        from importlib.metadata import version

        return version("chiploop")
    except Exception:  # noqa: BLE001 - running from a source tree that was never installed
        return "0+unknown"


class Daemon:
    """One device, its registry, scheduler and sessions, behind one gRPC server.

    ``start()`` binds and serves (returns the bound port), ``stop()`` drains and
    releases the device. Tests build it in-process; ``chiploop serve`` runs it.
    """

    def __init__(self, config: DaemonConfig, device: Device | None = None) -> None:
        self.config = config.check()
        self.device = device if device is not None else open_device(config.backend, workers=config.workers)
        self.registry = Registry(self.device, max_models=config.max_models)
        self.scheduler = Scheduler(self.device, max_queue=config.max_queue)
        self.sessions = SessionStore(
            max_sessions=config.max_sessions, ttl_s=config.session_ttl_s, max_kept_events=config.max_session_events
        )
        self.servicer = ChipServicer(
            self.device,
            self.registry,
            self.scheduler,
            self.sessions,
            server_version=server_version(),
            backends_available=available_backends(),
            max_message_bytes=config.max_message_bytes,
            workers=config.workers,
            max_streams=config.streams(),
        )
        self.health = health.HealthServicer()
        self.server: grpc.Server | None = None
        self.port: int | None = None
        self._stopped = threading.Event()

    @property
    def address(self) -> str:
        host = self.config.address.rpartition(":")[0]
        return f"{host}:{self.port}"

    def start(self) -> int:
        """Bind, serve, warm up; on any failure everything started is stopped and the device released."""
        try:
            return self._start()
        except BaseException:
            self.stop(grace=0)
            raise

    def _start(self) -> int:
        config = self.config
        limit = config.max_message_bytes
        # Every waiting job holds its call's thread, as does every open stream: with fewer threads
        # than that the queue would end at the pool's size, out of the scheduler's sight, and health
        # checks would wait behind it. The reserve serves info, health, deploys and reads.
        threads = config.max_queue + 1 + config.streams() + RESERVED_THREADS
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="chiploop-grpc"),
            # More calls than threads are refused at once (RESOURCE_EXHAUSTED), not queued unseen.
            maximum_concurrent_rpcs=threads,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # Notice vanished peers, so their streams end and their sessions can expire.
                ("grpc.keepalive_time_ms", 60_000),
                ("grpc.keepalive_timeout_ms", 20_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.so_reuseport", 0),
            ],
        )
        chiploop_pb2_grpc.add_ChipServicer_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            self.port = self.server.add_insecure_port(config.address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {config.address}: {exc}") from None
        if not self.port:
            raise OSError(f"cannot listen on {config.address} (in use, or not an address of this host)")
        self.server.start()
        threading.Thread(target=self._sweep, name="chiploop-sweep", daemon=True).start()
        if config.warm_up:
            self.device.warm_up()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if config.port_file:
            path = Path(config.port_file)
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(f"{self.port}\n")
            tmp.replace(path)  # atomic: a reader never sees half a number
        log.info("serving backend %s on %s", config.backend, self.address)
        return self.port

    def stop(self, grace: float | None = None) -> None:
        """Answer NOT_SERVING, let running calls finish for ``grace`` seconds, release the device."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        if self.server is not None:
            self.server.stop(self.config.grace_s if grace is None else grace).wait()
        self.servicer.refusals.flush(everything=True)
        if self.scheduler.stop(timeout=WORKER_JOIN_S):
            self.device.close()
        else:
            # Only the worker may touch the device, and it is still inside a job (a kernel cannot be
            # interrupted): leave the device to it. The worker is a daemon thread; the process exits.
            log.warning("the device is still running a job after %.0f s: not closing it under that job", WORKER_JOIN_S)

    def _sweep(self) -> None:
        # Sessions also expire whenever the store is used; this bounds how long an expired one (and
        # its kept outputs) lingers on a daemon that only runs batches: half a TTL, 1 to 60 s. It
        # also logs how often each kind of refusal repeated, once its window has closed.
        period = min(max(self.config.session_ttl_s / 2, 1.0), 60.0)
        while not self._stopped.wait(period):
            self.sessions.expire()
            self.servicer.refusals.flush()

    def wait(self) -> None:
        self._stopped.wait()

    def __enter__(self) -> Daemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(config: DaemonConfig) -> int:
    """Run the daemon until SIGTERM or SIGINT (or its ``parent_pid`` goes); the exit status."""
    if config.parent_pid is not None and os.getppid() != config.parent_pid:
        raise InvalidArgument(
            "parent_pid", f"{config.parent_pid} is not this daemon's parent (its parent is {os.getppid()})"
        )
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    tune_malloc()
    daemon = Daemon(config)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():  # asked twice: the owner will not wait for the grace
            log.warning("%s again: exiting now, without waiting for running calls", name)
            os._exit(128 + signum)
        log.info("%s: stopping (grace %.1f s; the signal again exits at once)", name, config.grace_s)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        daemon.start()
        print(f"chiploop daemon: backend {config.backend} serving on {daemon.address} (pid {os.getpid()})", flush=True)
        while not stop.wait(0.2):
            if config.parent_pid is not None and os.getppid() != config.parent_pid:
                log.warning("parent process %d is gone: stopping", config.parent_pid)
                break
    finally:
        daemon.stop()
    log.info("stopped")
    return 0
