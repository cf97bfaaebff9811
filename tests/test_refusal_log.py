"""The daemon's refusal log: each kind once a window, and how often it repeated."""

from __future__ import annotations

import logging

import grpc
from chiploop_server.refusal_log import RefusalLog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def said(caplog) -> list[tuple[str, str]]:
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "test.refusals"]
    caplog.clear()
    return lines


def test_a_kind_is_said_once_a_window_and_its_repeats_when_it_closes(caplog):
    clock = Clock()
    refusals = RefusalLog(logging.getLogger("test.refusals"), window_s=60, clock=clock)
    with caplog.at_level("INFO", logger="test.refusals"):
        for _ in range(5):
            refusals.record("Run", grpc.StatusCode.NOT_FOUND, "alice", "no model 'x'", peer="ipv4:1")
        refusals.record("Run", grpc.StatusCode.INVALID_ARGUMENT, "alice", "events[3].x: 40 > 33")
        refusals.record("Run", grpc.StatusCode.NOT_FOUND, "bob", "no model 'y'")
        assert said(caplog) == [
            ("INFO", "Run refused (NOT_FOUND) for alice at ipv4:1: no model 'x'"),
            ("INFO", "Run refused (INVALID_ARGUMENT) for alice: events[3].x: 40 > 33"),
            ("INFO", "Run refused (NOT_FOUND) for bob: no model 'y'"),
        ]
        clock.now = 59.0
        refusals.flush()
        assert said(caplog) == []  # no window has closed
        clock.now = 61.0
        refusals.record("Run", grpc.StatusCode.NOT_FOUND, "alice", "no model 'z'")  # opens the next window
        assert said(caplog) == [
            ("INFO", "Run refused (NOT_FOUND) for alice: no model 'z' (and 4 more like it in the last 60 s, not logged)")
        ]
        refusals.record("Run", grpc.StatusCode.NOT_FOUND, "alice", "no model 'z'")
        clock.now = 125.0
        refusals.flush()  # alice's second window closed with one repeat; the others had none
        assert said(caplog) == [("INFO", "Run refused (NOT_FOUND) for alice 1 more time in the last 64 s")]
        refusals.record("Run", grpc.StatusCode.NOT_FOUND, "alice", "again")
        assert said(caplog) == [("INFO", "Run refused (NOT_FOUND) for alice: again")]


def test_internal_errors_keep_their_traceback_and_every_repeat_is_said_at_debug(caplog):
    clock = Clock()
    refusals = RefusalLog(logging.getLogger("test.refusals"), clock=clock)
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        error = exc
    with caplog.at_level("DEBUG", logger="test.refusals"):
        refusals.record("Run", grpc.StatusCode.INTERNAL, "alice", "internal error", exc=error)
        refusals.record("Run", grpc.StatusCode.INTERNAL, "alice", "internal error", exc=error)
        records = [r for r in caplog.records if r.name == "test.refusals"]
        assert [r.levelname for r in records] == ["ERROR", "DEBUG"]
        assert records[0].exc_info[1] is error
        caplog.clear()
        refusals.flush(everything=True)  # the daemon's stop: every count, open windows too
        assert said(caplog) == [("ERROR", "Run failed (INTERNAL) for alice 1 more time in the last 0 s")]


def test_the_kinds_followed_are_bounded_and_a_dropped_kind_says_its_count(caplog):
    refusals = RefusalLog(logging.getLogger("test.refusals"), max_kinds=2, clock=Clock())
    with caplog.at_level("INFO", logger="test.refusals"):
        refusals.record("Run", grpc.StatusCode.NOT_FOUND, "u0", "m")
        refusals.record("Run", grpc.StatusCode.NOT_FOUND, "u0", "m")
        refusals.record("Run", grpc.StatusCode.NOT_FOUND, "u1", "m")
        caplog.clear()
        refusals.record("Run", grpc.StatusCode.NOT_FOUND, "u2", "m")
        assert said(caplog) == [
            ("INFO", "Run refused (NOT_FOUND) for u0 1 more time in the last 0 s"),
            ("INFO", "Run refused (NOT_FOUND) for u2: m"),
        ]
    assert len(refusals._kinds) == 2  # noqa: SLF001


def test_a_client_sending_a_new_token_each_call_is_not_a_new_kind_each_call(caplog):
    clock = Clock()
    refusals = RefusalLog(logging.getLogger("test.refusals"), max_users=2, clock=clock)
    with caplog.at_level("INFO", logger="test.refusals"):
        for user in range(50):
            refusals.record("Run", grpc.StatusCode.NOT_FOUND, f"token-{user}", "no model")
        refusals.record("GetInfo", grpc.StatusCode.UNAVAILABLE, "token-49", "stopping")  # another kind's own budget
        assert said(caplog) == [
            ("INFO", "Run refused (NOT_FOUND) for token-0: no model"),
            ("INFO", "Run refused (NOT_FOUND) for token-1: no model"),
            ("INFO", "Run refused (NOT_FOUND) for other users: no model"),
            ("INFO", "GetInfo refused (UNAVAILABLE) for token-49: stopping"),
        ]
        clock.now = 60.0
        refusals.flush()
        assert said(caplog) == [("INFO", "Run refused (NOT_FOUND) for other users 47 more times in the last 60 s")]
        refusals.record("Run", grpc.StatusCode.NOT_FOUND, "token-50", "no model")  # a new window has room again
        assert said(caplog) == [("INFO", "Run refused (NOT_FOUND) for token-50: no model")]
