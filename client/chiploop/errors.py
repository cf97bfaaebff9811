"""The error vocabulary shared by client, server and backends.

Every refusal the service can give is one of these classes. The server maps each
class to one gRPC status code (see ``chiploop_server.transport``) and the client
maps the code back to the same class, so a caller catches the same exception
whether the simulator runs in-process or behind a daemon.
"""

from __future__ import annotations

import numbers


class ChiploopError(Exception):
    """Base class of every error chiploop raises on purpose."""

    grpc_code_name = "INTERNAL"


class InvalidArgument(ChiploopError, ValueError):
    """A request field is malformed; ``field`` names it (dotted path), ``reason`` says what is wrong."""

    grpc_code_name = "INVALID_ARGUMENT"

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.reason = message
        super().__init__(f"{field}: {message}" if field else message)


class NetworkRejected(InvalidArgument):
    """A network breaks a chip limit: names the layer, the limit and the value."""

    def __init__(self, layer: int | str, limit: str, value: object, allowed: object) -> None:
        self.layer = layer
        self.limit = limit
        self.value = value
        self.allowed = allowed
        where = f"layers[{layer}]" if isinstance(layer, int) else str(layer)
        super().__init__(where, f"{limit} is {value}, the chip allows {allowed}")


class NotFound(ChiploopError, KeyError):
    """An unknown model id or session id."""

    grpc_code_name = "NOT_FOUND"

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class ResourceExhausted(ChiploopError):
    """A request too large, or a queue too full, to be taken."""

    grpc_code_name = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(ChiploopError, TimeoutError):
    """The caller's deadline passed before the work could be done."""

    grpc_code_name = "DEADLINE_EXCEEDED"


class BackendUnavailable(ChiploopError):
    """A backend that cannot be used here (e.g. samna is not installed)."""

    grpc_code_name = "UNAVAILABLE"


class FailedPrecondition(ChiploopError):
    """The request is well formed but the state does not allow it."""

    grpc_code_name = "FAILED_PRECONDITION"


class Unauthenticated(ChiploopError):
    """A token is missing or wrong."""

    grpc_code_name = "UNAUTHENTICATED"


class Cancelled(ChiploopError):
    """The caller cancelled the call (e.g. closed its client) before it was answered."""

    grpc_code_name = "CANCELLED"


#: How a full device queue's refusal (ResourceExhausted) begins: the client waits and tries again
#: (congestion), which it does not for the other ResourceExhausted (a message too large).
QUEUE_FULL = "the device queue is full"

#: gRPC's own refusal (ResourceExhausted) when a daemon already holds as many calls as it has
#: threads for (``maximum_concurrent_rpcs``): congestion as well, waited out the same way.
RPC_LIMIT = "Concurrent RPC limit exceeded"

#: The ResourceExhausted answers that mean "busy now": anything else (a message too large) is final.
CONGESTION = (QUEUE_FULL, RPC_LIMIT)

ERROR_CLASSES: dict[str, type[ChiploopError]] = {
    cls.grpc_code_name: cls
    for cls in (
        InvalidArgument,
        NotFound,
        ResourceExhausted,
        DeadlineExceeded,
        BackendUnavailable,
        FailedPrecondition,
        Unauthenticated,
        Cancelled,
    )
}


def check_int(value: object, field: str, lo: int, hi: int) -> int:
    """``value`` as an int if it is an integer (not a bool, not a float) in lo..hi; else
    InvalidArgument naming ``field``. Python callers of the simulator bypass the wire codec,
    which would have made it an int: 0.5 us must be refused, not divided by."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgument(field, f"must be an integer, got {value!r}")
    if not lo <= int(value) <= hi:
        raise InvalidArgument(field, f"must be {lo}..{hi}, got {value}")
    return int(value)
