"""The daemon's settings: defaults < TOML file < environment (CHIPLOOP_*) < command-line flags.

A TOML file holds the same names as the flags (``max_message_bytes = 67108864``),
at the top level or in a ``[daemon]`` table. The environment variable of a setting
is ``CHIPLOOP_`` + its name in capitals (``CHIPLOOP_ADDRESS``, ``CHIPLOOP_BACKEND``,
``CHIPLOOP_WORKERS``, ...); ``CHIPLOOP_CONFIG`` names the file. An unknown name or a
value of the wrong kind or range is refused naming where it came from; an unknown
CHIPLOOP_* variable is warned of when the daemon starts (the environment also holds
the client's variables, and others' of tools to come).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from chiploop.errors import InvalidArgument
from chiploop.run import MAX_WORKERS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ENV_PREFIX = "CHIPLOOP_"
ENV_CONFIG = "CHIPLOOP_CONFIG"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: The smallest max_message_bytes: GetInfo's answer (about 1 KiB) and the refusals must fit.
MIN_MESSAGE_BYTES = 4096
#: CHIPLOOP_* variables of the client and the backends, which may share a daemon's environment:
#: any other that is not a setting's is a typo, and serve() warns of it.
OTHER_ENV = (
    "CHIPLOOP_CONFIG", "CHIPLOOP_TOKEN", "CHIPLOOP_NMNIST_DIR", "CHIPLOOP_CACHE_GB", "CHIPLOOP_TUNE_MALLOC",
    "CHIPLOOP_SPECK_BOARD",  # the hardware tests' switch
)  # fmt: skip
#: Longest grace or session lifetime: a week. Beyond threading.TIMEOUT_MAX (292 years) gRPC's
#: stop() cannot wait, and its shutdown then hangs for good.
MAX_SECONDS = 7 * 24 * 3600.0


@dataclass(frozen=True)
class DaemonConfig:
    #: Where to listen. Loopback by default: there is no authentication yet, so exposing
    #: the daemon (0.0.0.0:50051) is a deliberate choice. Port 0 picks a free port.
    address: str = "127.0.0.1:50051"
    backend: str = "sim"
    #: Threads the backend may use (the simulator runs this many samples of a batch at once).
    workers: int = 1
    #: Largest request or response, in bytes; a larger one is refused with RESOURCE_EXHAUSTED.
    max_message_bytes: int = 64 << 20
    #: Jobs waiting for the device beyond the running one; more is RESOURCE_EXHAUSTED. Each waiting
    #: call holds a server thread and its request (memory: about max_queue x max_message_bytes).
    max_queue: int = 64
    #: Deployed models kept (least recently used go first).
    max_models: int = 64
    #: Stream sessions kept (see chiploop_server.sessions for their lifetime).
    max_sessions: int = 64
    #: Output events a session keeps for ReadOutputs, its newest (16 bytes each: 64 MiB per
    #: session, at most about twice that while old chunks are trimmed); older ones were answered
    #: to the stream and are dropped. 0 keeps none (a live stream that reads its answers only).
    max_session_events: int = 1 << 22
    #: Streams open at the same time (each holds one server thread while it is open).
    max_streams: int = 16
    #: Seconds an ended stream's session stays readable after its last use.
    session_ttl_s: float = 600.0
    #: Seconds running calls get to finish on SIGTERM / SIGINT.
    grace_s: float = 5.0
    #: When set, the bound port is written there once the daemon serves (how LocalDaemon learns it).
    port_file: str | None = None
    #: When set, the daemon stops once this process is no longer its parent (LocalDaemon passes
    #: its own pid: a trainer killed by SIGTERM or SIGKILL runs no clean-up, and its daemon
    #: must not outlive it holding the cores and memory).
    parent_pid: int | None = None
    #: Compile the backend's kernels before serving, so that the first call is not slow.
    warm_up: bool = True
    log_level: str = "INFO"

    def streams(self) -> int:
        """Streams open at once: each holds a session, so never more than max_sessions."""
        return min(self.max_streams, self.max_sessions)

    def check(self) -> DaemonConfig:
        host, sep, port = self.address.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise InvalidArgument("address", f"must be HOST:PORT, got {self.address!r}")
        positive = ("workers", "max_message_bytes", "max_queue", "max_models", "max_sessions", "max_streams")
        for name in positive:
            if getattr(self, name) < 1:
                raise InvalidArgument(name, f"must be >= 1, got {getattr(self, name)}")
        if self.max_session_events < 0:
            raise InvalidArgument("max_session_events", f"must be >= 0, got {self.max_session_events}")
        if self.workers > MAX_WORKERS:
            raise InvalidArgument("workers", f"must be 1..{MAX_WORKERS}, got {self.workers}")
        for name in ("session_ttl_s", "grace_s"):
            if not 0 <= getattr(self, name) <= MAX_SECONDS:
                raise InvalidArgument(name, f"must be 0..{MAX_SECONDS:.0f} seconds, got {getattr(self, name)}")
        if self.log_level.upper() not in LOG_LEVELS:
            raise InvalidArgument("log_level", f"must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if self.parent_pid is not None and self.parent_pid < 1:
            raise InvalidArgument("parent_pid", f"must be a process id >= 1, got {self.parent_pid}")
        if self.max_message_bytes > 2**31 - 1:
            raise InvalidArgument("max_message_bytes", f"gRPC allows at most 2 GiB - 1, got {self.max_message_bytes}")
        if self.max_message_bytes < MIN_MESSAGE_BYTES:
            raise InvalidArgument(
                "max_message_bytes", f"must be >= {MIN_MESSAGE_BYTES} (GetInfo's answer must fit), got {self.max_message_bytes}"
            )
        if self.port_file is not None:
            path = Path(self.port_file)
            if path.is_dir():
                raise InvalidArgument("port_file", f"{path} is a folder; name a file in it")
            if not path.parent.is_dir():
                raise InvalidArgument("port_file", f"the folder {path.parent} does not exist")
        return self


_FIELDS = {f.name: f for f in fields(DaemonConfig)}
_TYPES = {name: type(getattr(DaemonConfig(), name)) for name in _FIELDS}
_TYPES["port_file"] = str
_TYPES["parent_pid"] = int


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = _TYPES[name]
    where = f"{source}" if source.startswith(ENV_PREFIX) else f"{source}: {name}"
    if value is None:
        return None
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(str(value).replace("_", "")) if isinstance(value, str) else int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise InvalidArgument(where, f"must be {kind.__name__}, got {value!r}") from None


def from_mapping(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Checked settings from a mapping (a TOML file's or the flags'); unknown names are refused."""
    out = {}
    for name, value in values.items():
        key = name.replace("-", "_")
        if key not in _FIELDS:
            raise InvalidArgument(f"{source}: {name}", f"unknown setting; known: {', '.join(_FIELDS)}")
        out[key] = _coerce(key, value, source)
    return out


def from_file(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise InvalidArgument("config", f"cannot read {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgument("config", f"{path} is not valid TOML: {exc}") from None
    table = data.pop("daemon", {})
    if not isinstance(table, dict):
        raise InvalidArgument(f"{path}: daemon", "must be a table")
    return from_mapping({**data, **table}, str(path))


def reachable_host(host: str) -> str:
    """The host to ask, from this machine, for a daemon listening on ``host``: a wildcard on loopback."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(host, host)


def unknown_env(env: Mapping[str, str]) -> list[str]:
    """The CHIPLOOP_* names in ``env`` that are neither a setting's nor the client's (typos, most likely)."""
    known = {ENV_PREFIX + name.upper() for name in _FIELDS} | set(OTHER_ENV)
    return sorted(name for name in env if name.startswith(ENV_PREFIX) and name not in known)


def from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out = {}
    for name in _FIELDS:
        key = ENV_PREFIX + name.upper()
        if key in env and env[key] != "":
            out[name] = _coerce(name, env[key], key)
    return out


def load(flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> DaemonConfig:
    """The settings from every source; ``flags`` holds only what was given (None: not given)."""
    env = os.environ if env is None else env
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    config_file = flags.pop("config", None) or env.get(ENV_CONFIG) or None
    merged: dict[str, Any] = {}
    source: dict[str, str] = {}  # each setting as its source names it, for a refusal of its value
    layers = [(from_file(config_file), lambda name: f"{config_file}: {name}")] if config_file else []
    layers += [
        (from_env(env), lambda name: ENV_PREFIX + name.upper()),
        (from_mapping(flags, "flag"), lambda name: "flag --" + name.replace("_", "-")),
    ]
    for values, named in layers:
        merged.update(values)
        source.update({name: named(name) for name in values})
    try:
        return replace(DaemonConfig(), **merged).check()
    except InvalidArgument as exc:
        if exc.field not in source:
            raise
        raise InvalidArgument(source[exc.field], exc.reason) from None
