"""LocalDaemon: a daemon in a child process, for training scripts and tests on one machine.

    with LocalDaemon(backend="sim", workers=1) as daemon:
        with ChipClient(daemon.address) as chip:
            ...

A subprocess, not a thread, so the daemon's compute threads do not fight the
trainer's for the GIL; the child gets NUMBA_NUM_THREADS / OMP_NUM_THREADS =
``workers`` and the allocator settings that keep large messages fast. The bound
port comes back through a port file; the context manager returns once the daemon
answers its health check SERVING, and stops it (SIGTERM, then SIGKILL) on exit.
The child also stops by itself when this process dies without that clean-up
(``--parent-pid``); the temporary folder such a process leaves (port file, log)
is removed by the next LocalDaemon to start.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from chiploop.errors import BackendUnavailable

from chiploop_server.config import reachable_host

#: Raised thresholds: big message buffers stay in the heap instead of being mmapped afresh each time.
MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": str(256 << 20), "MALLOC_MMAP_THRESHOLD_": str(256 << 20)}

FOLDER_PREFIX = "chiploop-daemon-"
#: In each temporary folder: locked while the folder is in use (see hold_folder); holds its maker's pid.
OWNER_FILE = "owner"


class LocalDaemon:
    def __init__(
        self,
        backend: str = "sim",
        workers: int = 1,
        address: str = "127.0.0.1:0",
        extra_args: tuple[str, ...] | list[str] = (),
        env: dict[str, str] | None = None,
        startup_timeout: float = 120.0,
        log_path: str | os.PathLike | None = None,
    ) -> None:
        self.backend = backend
        self.workers = int(workers)
        self.bind = address
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.startup_timeout = startup_timeout
        self._log_path = Path(log_path) if log_path else None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._owner: IO | None = None  # the folder's lock file, held while this daemon is ours
        self.process: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def address(self) -> str:
        if self.port is None:
            raise BackendUnavailable("the local daemon is not running")
        return f"{reachable_host(self.bind.rpartition(':')[0])}:{self.port}"

    @property
    def log_path(self) -> Path:
        assert self._log_path is not None
        return self._log_path

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self) -> LocalDaemon:
        remove_orphaned_folders()
        self._tmp = tempfile.TemporaryDirectory(prefix=FOLDER_PREFIX)
        self._owner = hold_folder(Path(self._tmp.name))
        port_file = Path(self._tmp.name) / "port"
        if self._log_path is None:
            self._log_path = Path(self._tmp.name) / "daemon.log"
        threads = str(self.workers)
        env = {
            **os.environ,
            **MALLOC_ENV,
            "NUMBA_NUM_THREADS": threads,
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        command = [
            sys.executable, "-m", "chiploop_server", "serve",
            "--address", self.bind, "--backend", self.backend, "--workers", threads,
            "--port-file", str(port_file), "--parent-pid", str(os.getpid()), *self.extra_args,
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            # Output goes to a file: a pipe nobody reads would fill and stall the daemon. Its own
            # session: a Ctrl-C in the terminal is the owner's to handle (a trainer checkpoints at
            # the next batch and needs the chip until then); --parent-pid still ends it with its owner.
            # The daemon holds the folder's lock too (the same open file): its folder stays while
            # either lives, whatever pids other namespaces see.
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                pass_fds=(self._owner.fileno(),),
            )  # fmt: skip
        try:
            self._wait_serving(port_file)
        except BaseException:
            # Interrupted (Ctrl-C in a notebook, a signal) or failed: __exit__ will not run, and the
            # daemon, in a session of its own, would not see the Ctrl-C.
            self.stop()
            raise
        return self

    def _wait_serving(self, port_file: Path) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while not port_file.exists():
            if self.process.poll() is not None:
                raise BackendUnavailable(
                    f"the local daemon exited at start-up (status {self.process.returncode}):\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise BackendUnavailable(f"the local daemon did not serve within {self.startup_timeout:g} s")
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        self._wait_healthy(deadline)

    def _wait_healthy(self, deadline: float) -> None:
        import grpc
        from chiploop.client import CHANNEL_OPTIONS
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise BackendUnavailable(f"the local daemon never became healthy:\n{self.log_tail()}")
                time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (graceful), SIGKILL after ``timeout``; the exit status."""
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.port = None
        self._cleanup()
        return None if process is None else process.returncode

    def _cleanup(self) -> None:
        if self._owner is not None:
            self._owner.close()
            self._owner = None
        if self._tmp is not None:
            if self._log_path is not None and self._log_path.parent == Path(self._tmp.name):
                self._log_path = None  # it goes with the folder
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def hold_folder(folder: Path) -> IO:
    """Mark ``folder`` as in use: an exclusive lock on its OWNER_FILE, held while the file stays
    open (here, and in the daemon it is passed to). Made under another name and renamed locked,
    so a sweep never finds the file before its lock."""
    partial = folder / (OWNER_FILE + ".new")
    owner = open(partial, "w")  # noqa: SIM115 - held open for the daemon's life
    fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
    owner.write(f"{os.getpid()}\n")  # for a person looking; the lock is what counts
    owner.flush()
    partial.rename(folder / OWNER_FILE)
    return owner


def remove_orphaned_folders(root: str | os.PathLike | None = None) -> None:
    """Remove the temporary folders of LocalDaemons that died without their clean-up (a trainer
    killed by SIGKILL, and then its daemon): no process holds their lock any more."""
    for folder in Path(root or tempfile.gettempdir()).glob(FOLDER_PREFIX + "*"):
        try:
            with open(folder / OWNER_FILE, "rb") as owner:
                fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(folder, ignore_errors=True)  # under the lock: no one can take it meanwhile
        except OSError:
            continue  # held (in use), being made, not ours to read, or gone
