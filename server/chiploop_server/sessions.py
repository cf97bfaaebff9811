"""Stream sessions: a network's state kept between chunks of events, by session id.

Lifetime (the choice, see docs/api.md): a session opens with its StreamEvents
call and OUTLIVES the stream, so its outputs and membranes stay readable
(ReadOutputs, ReadMembranes) and resettable (Reset) after the stream ends. It is
dropped when it has not been used for ``ttl_s`` seconds after its stream ended, or, when ``max_sessions``
are open and another is asked for, the least recently used session whose stream
has ended goes first. While every session still streams, a new one is refused
(RESOURCE_EXHAUSTED). Reset zeroes a session's state; it does not close it. A session keeps
its newest ``max_kept_events`` output events (the stream's answers carried every one).
A session belongs to the user who opened it; to anyone else it does not exist.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from chiploop.errors import NotFound, ResourceExhausted
from chiploop.run import Readout

from chiploop_server.devices.base import Session


@dataclass(eq=False)
class SessionEntry:
    session_id: str
    user: str
    model_id: str
    readout: Readout
    sensor_size: tuple[int, int]
    num_layers: int
    session: Session  # used only on the device's worker thread
    streaming: bool = True
    events_in: int = 0
    last_t: int = -1  # the newest event time taken: the next chunk may not go back in time
    resets: int = 0  # the pages of one ReadOutputs must all come from one (resets, outputs) state
    last_used: float = field(default_factory=time.monotonic)


class SessionStore:
    def __init__(
        self,
        max_sessions: int = 64,
        ttl_s: float = 600.0,
        max_kept_events: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self.max_kept_events = max_kept_events
        self._clock = clock
        self._entries: OrderedDict[str, SessionEntry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._entries)

    def add(
        self,
        user: str,
        model_id: str,
        readout: Readout,
        sensor_size: tuple[int, int],
        num_layers: int,
        session: Session,
    ) -> SessionEntry:
        with self._lock:
            self._expire()
            if len(self._entries) >= self.max_sessions:
                ended = next((sid for sid, e in self._entries.items() if not e.streaming), None)
                if ended is None:
                    raise ResourceExhausted(
                        f"{self.max_sessions} sessions are streaming (the daemon's max_sessions); close one first"
                    )
                del self._entries[ended]
            entry = SessionEntry(
                session_id=secrets.token_hex(12),
                user=user,
                model_id=model_id,
                readout=readout,
                sensor_size=sensor_size,
                num_layers=num_layers,
                session=session,
                last_used=self._clock(),
            )
            self._entries[entry.session_id] = entry
            return entry

    def get(self, session_id: str, user: str) -> SessionEntry:
        with self._lock:
            self._expire()
            entry = self._entries.get(session_id)
            if entry is None or entry.user != user:
                raise NotFound(
                    f"session_id: no session {session_id!r} (never opened, or expired after {self.ttl_s:g} s unused)"
                )
            entry.last_used = self._clock()
            self._entries.move_to_end(session_id)
            return entry

    def end_stream(self, session_id: str) -> None:
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is not None:
                entry.streaming = False
                entry.last_used = self._clock()
                self._entries.move_to_end(session_id)  # eviction takes the least recently used first

    def expire(self) -> None:
        """Drop the sessions past their TTL now (the daemon sweeps on a timer: a daemon used only
        for Runs never touches the store, and would keep them and their outputs)."""
        with self._lock:
            self._expire()

    def _expire(self) -> None:
        now = self._clock()
        # A streaming session lives as long as its stream (keepalive ends the streams of vanished peers).
        for sid in [sid for sid, e in self._entries.items() if not e.streaming and now - e.last_used > self.ttl_s]:
            del self._entries[sid]
