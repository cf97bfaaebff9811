"""A Job: one piece of device work between the servicer and the device's worker.

The servicer makes a Job per request (its kind, the user who asked, what to do
with the device, the caller's deadline) and waits on its future; the scheduler
decides when it runs. Keeping the request as a plain object is what lets a fair
queue, leases or accounting slot in between without touching either side.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from chiploop_server.devices.base import Device

_ids = itertools.count(1)


@dataclass(eq=False)
class Job:
    """``payload(device)`` runs on the device's worker thread; its result lands in ``future``."""

    kind: str  # "run", "feed", "read_outputs", "read_membranes", "reset", "open"
    user: str
    payload: Callable[[Device], Any]
    deadline: float | None = None  # time.monotonic() seconds; None: no deadline
    future: Future = field(default_factory=Future)
    id: int = field(default_factory=lambda: next(_ids))
    size: int = 0  # the work's size in events, for accounting and a future cost-aware queue
    # A stream's job: its place was taken when the stream opened (max_streams bounds those), so a
    # full queue does not refuse it; a refusal would end the stream, and its session with it.
    reserved: bool = False
    submitted_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0

    def expired(self, now: float | None = None) -> bool:
        return self.deadline is not None and (time.monotonic() if now is None else now) >= self.deadline

    @property
    def queued_seconds(self) -> float:
        return max(0.0, (self.started_at or time.monotonic()) - self.submitted_at)

    @property
    def run_seconds(self) -> float:
        return max(0.0, self.finished_at - self.started_at) if self.started_at else 0.0


def deadline_from(time_remaining: float | None) -> float | None:
    """A monotonic deadline from gRPC's ``context.time_remaining()`` (None, or huge, when the caller set none)."""
    if time_remaining is None or time_remaining > 10**8:
        return None
    return time.monotonic() + time_remaining
