"""Build and run the gRPC daemon: the Chip service, health checking, reflection, graceful stop."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
from chiploop.errors import InvalidArgument
from chiploop.v1 import chiploop_pb2_grpc
from chiploop.wire import SERVICE_NAME, tune_malloc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from chiploop_server.binding import listen
from chiploop_server.config import DaemonConfig, unknown_env
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
        self._warming = False  # the kernels are compiling (on a thread of their own)
        self._close_when_warm = False  # stopped while they were: the warm-up's thread closes the device
        self._device_lock = threading.Lock()
        self._stopped = threading.Event()

    @property
    def address(self) -> str:
        host = self.config.address.rpartition(":")[0]
        return f"{host}:{self.port}"

    def start(self, abort: Callable[[], bool] | None = None) -> int | None:
        """Bind, serve, warm up; on any failure everything started is stopped and the device released.

        ``abort`` is asked while the kernels compile (a minute on a cold cache): when it says so
        (a signal, the parent gone) the daemon stops without ever answering SERVING, and start()
        returns None instead of the port.
        """
        try:
            return self._start(abort)
        except _Aborted:
            self.stop(grace=0)
            return None
        except BaseException:
            self.stop(grace=0)
            raise

    def _start(self, abort: Callable[[], bool] | None) -> int:
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
        self.port = listen(self.server, config.address)
        self.server.start()
        threading.Thread(target=self._sweep, name="chiploop-sweep", daemon=True).start()
        if config.warm_up:
            self._warm_up(abort)
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if config.port_file:
            path = Path(config.port_file)
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(f"{self.port}\n")
            tmp.replace(path)  # atomic: a reader never sees half a number
        log.info("serving backend %s on %s", config.backend, self.address)
        return self.port

    def _warm_up(self, abort: Callable[[], bool] | None) -> None:
        # On a thread of its own: compiling holds the main thread in native code, where no signal
        # handler runs, for up to a minute.
        log.info("compiling the backend's kernels before serving (health answers NOT_SERVING until then)")
        failed: list[BaseException] = []

        def warm_up() -> None:
            try:
                self.device.warm_up()
            except BaseException as exc:  # noqa: BLE001 - raised again on the starting thread
                failed.append(exc)
            finally:
                with self._device_lock:
                    self._warming = False
                    if self._close_when_warm:  # stopped meanwhile: the device was left to this thread
                        self.device.close()

        self._warming = True
        threading.Thread(target=warm_up, name="chiploop-warm-up", daemon=True).start()
        while self._warming:
            time.sleep(0.05)
            if abort is not None and abort():
                raise _Aborted
        if self._stopped.is_set():  # stop() from another thread meanwhile: never announce serving
            raise _Aborted
        if failed:
            raise failed[0]

    def stop(self, grace: float | None = None) -> None:
        """Answer NOT_SERVING, let running calls finish for ``grace`` seconds, release the device."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.servicer.stopping.set()
        self.health.enter_graceful_shutdown()
        if self.server is not None:
            self.server.stop(self.config.grace_s if grace is None else grace).wait()
        self.servicer.refusals.flush(everything=True)
        if self.config.port_file and self.port:
            with contextlib.suppress(OSError):  # a reader must not take a stopped daemon's port for a live one's
                if Path(self.config.port_file).read_text().strip() == str(self.port):
                    Path(self.config.port_file).unlink()
        if not self.scheduler.stop(timeout=WORKER_JOIN_S):
            # Only the worker may touch the device, and it is still inside a job (a kernel cannot be
            # interrupted): leave the device to it. The worker is a daemon thread; the process exits.
            log.warning("the device is still running a job after %.0f s: not closing it under that job", WORKER_JOIN_S)
            return
        with self._device_lock:
            if self._warming:
                log.info("stopped while the kernels compile: the device closes once they are done")
                self._close_when_warm = True
            else:
                self.device.close()

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
    """Run the daemon until SIGTERM, SIGINT or SIGHUP (or its ``parent_pid`` goes); the exit status."""
    if config.parent_pid is not None and os.getppid() != config.parent_pid:
        raise InvalidArgument(
            "parent_pid", f"{config.parent_pid} is not this daemon's parent (its parent is {os.getppid()})"
        )
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    log.info("chiploop %s, settings: %s", server_version(), config)
    for name in unknown_env(os.environ):
        log.warning("%s is not a setting of the daemon (a typo?): ignored", name)
    if config.streams() < config.max_streams:
        log.info("max_streams %d is cut to max_sessions (%d): each stream holds a session", config.max_streams,
                 config.max_sessions)  # fmt: skip
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

    def parent_gone() -> bool:
        if config.parent_pid is not None and os.getppid() != config.parent_pid:
            log.warning("parent process %d is gone: stopping", config.parent_pid)
            return True
        return False

    # SIGHUP too: a daemon started from a terminal that closes drains like any other stop; one
    # started to outlive its terminal (nohup) keeps ignoring it.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, on_signal)
    try:
        if daemon.start(abort=lambda: stop.is_set() or parent_gone()) is None:
            log.info("stopped before serving")
            return 0
        print(f"chiploop daemon: backend {config.backend} serving on {daemon.address} (pid {os.getpid()})", flush=True)
        while not stop.wait(0.2) and not parent_gone():
            pass
    finally:
        daemon.stop()
    log.info("stopped")
    return 0


class _Aborted(Exception):
    """start() was asked to stop before serving."""
