"""The queue between the servicer and the device, and the device's one worker thread.

FIFO for now. The order lives in a ``JobQueue`` object alone (``push``, ``pop``,
``__len__``), so a per-user fair queue (round robin over users' FIFOs) or leases
replace ``FifoQueue`` without touching the servicer or the worker.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol

from chiploop.errors import QUEUE_FULL, BackendUnavailable, DeadlineExceeded, ResourceExhausted

from chiploop_server.devices.base import Device
from chiploop_server.jobs import Job

log = logging.getLogger("chiploop.scheduler")


class JobQueue(Protocol):
    def push(self, job: Job) -> None: ...
    def pop(self) -> Job: ...
    def discard(self, dead: Callable[[Job], bool]) -> None: ...
    def __len__(self) -> int: ...


class FifoQueue:
    """First come, first served."""

    def __init__(self) -> None:
        self._jobs: collections.deque[Job] = collections.deque()

    def push(self, job: Job) -> None:
        self._jobs.append(job)

    def pop(self) -> Job:
        return self._jobs.popleft()

    def discard(self, dead: Callable[[Job], bool]) -> None:
        self._jobs = collections.deque(job for job in self._jobs if not dead(job))

    def __len__(self) -> int:
        return len(self._jobs)


class Scheduler:
    """Runs jobs on one device, one at a time, in the queue's order."""

    def __init__(self, device: Device, max_queue: int = 64, queue: JobQueue | None = None) -> None:
        self.device = device
        self.max_queue = max_queue
        self._queue: JobQueue = queue if queue is not None else FifoQueue()
        self._cond = threading.Condition()
        self._stopping = False
        self.running: Job | None = None  # the job on the device now (for dashboards and tests)
        self.jobs_done = 0
        self.jobs_expired = 0
        self._worker = threading.Thread(target=self._work, name=f"chiploop-device-{device.name}", daemon=True)
        self._worker.start()

    def depth(self) -> int:
        """Jobs waiting, not counting the one running."""
        with self._cond:
            self._queue.discard(self._dead)
            return len(self._queue)

    def _dead(self, job: Job) -> bool:
        """A waiting job nobody will read: its caller cancelled, or its deadline passed.

        An expired job is answered here, as the worker would answer it, rather than left for
        gRPC's cancel callback, which fires a moment after the caller has seen DeadlineExceeded:
        until then the dead job would still hold a place in a full queue.
        """
        if not job.expired():
            return job.future.cancelled()
        if job.future.set_running_or_notify_cancel():  # False: cancelled meanwhile, dead all the same
            self._expire(job, time.monotonic())
        return True

    def _expire(self, job: Job, now: float) -> None:
        """Answer a job whose deadline passed before it started (its future marked running)."""
        self.jobs_expired += 1
        job.future.set_exception(
            DeadlineExceeded(
                f"the deadline passed after {now - job.submitted_at:.3f} s in the queue, before the {job.kind} started"
            )
        )

    def submit(self, job: Job) -> Future:
        """Queue a job; ResourceExhausted when the queue is full (unless the job is reserved),
        BackendUnavailable when stopping."""
        with self._cond:
            if self._stopping:
                raise BackendUnavailable("the daemon is shutting down")
            if len(self._queue) >= self.max_queue:
                # Callers that went away hold no place; done for a reserved job too, or the dead jobs
                # of streams opened and cancelled in a loop would pile up while the device is busy.
                self._queue.discard(self._dead)
            if not job.reserved and len(self._queue) >= self.max_queue:
                raise ResourceExhausted(
                    f"{QUEUE_FULL} ({self.max_queue} jobs waiting); retry later"
                )
            job.submitted_at = time.monotonic()
            self._queue.push(job)
            self._cond.notify()
        return job.future

    def stop(self, timeout: float | None = None) -> bool:
        """Refuse new jobs, fail the queued ones, let the running one finish; whether the worker ended
        within ``timeout`` (if not, it is still inside a job and owns the device)."""
        with self._cond:
            self._stopping = True
            while len(self._queue):
                job = self._queue.pop()
                if job.future.set_running_or_notify_cancel():
                    job.future.set_exception(BackendUnavailable("the daemon is shutting down"))
            self._cond.notify_all()
        self._worker.join(timeout)
        return not self._worker.is_alive()

    def _next(self) -> Job | None:
        with self._cond:
            while not len(self._queue) and not self._stopping:
                self._cond.wait()
            if self._stopping and not len(self._queue):
                return None
            return self._queue.pop()

    def _finish(self, job: Job) -> None:
        # Before the future resolves: whoever the result wakes sees the device free.
        job.finished_at = time.monotonic()
        self.running = None
        self.jobs_done += 1

    def _work(self) -> None:
        while (job := self._next()) is not None:
            if not job.future.set_running_or_notify_cancel():
                continue  # the caller went away (cancelled RPC) while it waited
            job.started_at = time.monotonic()
            if job.expired(job.started_at):
                self._expire(job, job.started_at)
                continue
            self.running = job
            try:
                result = job.payload(self.device)
            except BaseException as exc:  # noqa: BLE001 - every failure goes back to the caller
                self._finish(job)
                job.future.set_exception(exc)
            else:
                self._finish(job)
                job.future.set_result(result)
            log.debug(
                "job %d %s user=%s queued %.3fs ran %.3fs", job.id, job.kind, job.user, job.queued_seconds, job.run_seconds
            )
