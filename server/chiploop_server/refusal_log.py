"""The daemon's log of refused and failed calls, with repeats summarized.

A client that loops on a bad request would otherwise write one line per call
(a soak test wrote 25 MB of them in minutes). Each kind of refusal, the same
RPC, status code and user, is logged the first time in a window; its repeats in
that window are counted, and the count is logged when the window closes (by the
daemon's periodic sweep, or with the next refusal of that kind). At most
MAX_USERS users are followed per RPC and code in a window; the others share one
kind. DEBUG logs every one. Internal errors are logged at ERROR with their traceback, the first
of each window too: a bug a client can trigger in a loop floods the log as well.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import grpc

#: How long the repeats of one kind of refusal are counted before their number is logged.
WINDOW_S = 60.0

#: Kinds of refusal followed at once; past it the oldest is dropped, its count logged first.
MAX_KINDS = 1024

#: Users whose refusals of one RPC and code are logged a window: tokens cost nothing (there is no
#: auth yet), so a client sending a new one each call would otherwise be a new kind each call.
#: The rest of that window's users share one kind, OTHER_USERS.
MAX_USERS = 8
OTHER_USERS = "other users"


@dataclass
class _Kind:
    opened: float  # when the window of this kind opened (its first logged refusal)
    repeats: int = 0  # refusals since then that were not logged

    def open_at(self, now: float, window_s: float) -> bool:
        return now - self.opened < window_s


class RefusalLog:
    """Logs refusals and internal errors, each kind once a window, and how often it repeated."""

    def __init__(
        self,
        log: logging.Logger,
        *,
        window_s: float = WINDOW_S,
        max_kinds: int = MAX_KINDS,
        max_users: int = MAX_USERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.window_s = window_s
        self.max_kinds = max_kinds
        self.max_users = max_users
        self._windows_opened: dict[tuple[str, str], deque[float]] = {}  # per (rpc, code): when, the last window
        self.clock = clock
        self._kinds: OrderedDict[tuple[str, str, str], _Kind] = OrderedDict()
        self._lock = threading.Lock()

    def record(
        self, rpc: str, code: grpc.StatusCode, user: str, message: str, *,
        peer: str = "", exc: BaseException | None = None,
    ) -> None:
        """One refused (or, with code INTERNAL, failed) call of ``rpc`` by ``user``, calling from ``peer``."""
        key = (rpc, code.name, user)
        now = self.clock()
        internal = code == grpc.StatusCode.INTERNAL
        evicted = None
        with self._lock:
            kind = self._kinds.get(key)
            if kind is None or not kind.open_at(now, self.window_s):
                opened = self._windows_opened.setdefault(key[:2], deque())
                while opened and now - opened[0] >= self.window_s:
                    opened.popleft()
                if len(opened) >= self.max_users:
                    user, peer = OTHER_USERS, ""
                    key = (rpc, code.name, user)
                    kind = self._kinds.get(key)
                else:
                    opened.append(now)
            if kind is not None and kind.open_at(now, self.window_s):
                kind.repeats += 1
                say = False
            else:
                repeats = kind.repeats if kind is not None else 0
                self._kinds[key] = _Kind(opened=now)
                self._kinds.move_to_end(key)
                evicted = self._kinds.popitem(last=False) if len(self._kinds) > self.max_kinds else None
                say = True
        if evicted is not None:
            self._say_repeats(evicted[0], evicted[1].repeats, now - evicted[1].opened)
        who = f"{user} at {peer}" if peer else user
        if not say:
            if self.log.isEnabledFor(logging.DEBUG):
                self.log.debug("%s %s (%s) for %s: %s", rpc, _verb(internal), code.name, who, message)
            return
        again = f" (and {repeats} more like it in the last {self.window_s:.0f} s, not logged)" if repeats else ""
        if internal:
            self.log.error("%s failed for %s: %s%s", rpc, who, message, again, exc_info=exc)
        else:
            self.log.info("%s refused (%s) for %s: %s%s", rpc, code.name, who, message, again)

    def flush(self, everything: bool = False) -> None:
        """Log the repeats of every kind whose window has closed (``everything``: of all), and forget those kinds."""
        now = self.clock()
        with self._lock:
            closed = [
                (key, kind) for key, kind in self._kinds.items() if everything or not kind.open_at(now, self.window_s)
            ]
            for key, _ in closed:
                del self._kinds[key]
        for key, kind in closed:
            self._say_repeats(key, kind.repeats, now - kind.opened)

    def _say_repeats(self, key: tuple[str, str, str], repeats: int, seconds: float) -> None:
        if not repeats:
            return
        rpc, code, user = key
        level = logging.ERROR if code == grpc.StatusCode.INTERNAL.name else logging.INFO
        self.log.log(
            level, "%s %s (%s) for %s %d more time%s in the last %.0f s", rpc,
            _verb(code == grpc.StatusCode.INTERNAL.name), code, user, repeats, "" if repeats == 1 else "s", seconds,
        )  # fmt: skip


def _verb(internal: bool) -> str:
    return "failed" if internal else "refused"
