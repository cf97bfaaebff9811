"""Binding the daemon's address: each address of a host name, with the system's reason when one fails."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import socket

import grpc

log = logging.getLogger("chiploop.daemon")


def listen(server: grpc.Server, address: str) -> int:
    """Bind ``address`` (HOST:PORT; port 0: a free one) on the server; the port.

    A host name is bound on every address it resolves to, each by itself: gRPC binds a name on
    whatever addresses it can and serves on those alone, so a port held by another program on
    one of them (127.0.0.1 of localhost) went unnoticed while clients there reached that program.
    An address this host cannot have (::1 where IPv6 is off) is skipped; one in use or forbidden
    stops the start.
    """
    host, _, port_text = address.rpartition(":")
    port = int(port_text)
    try:
        ipaddress.ip_address(host.strip("[]"))
        hosts = [host]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise OSError(f"cannot listen on {address}: {host!r} does not resolve ({exc.strerror})") from None
        hosts = list(dict.fromkeys(f"[{i[4][0]}]" if i[0] == socket.AF_INET6 else i[4][0] for i in infos))
        if port == 0 and len(hosts) > 1:
            port = _port_free_on_all(hosts)
    also = f" ({host} is {', '.join(hosts)})" if hosts != [host] else ""
    bound_any, skipped = False, []
    for one in hosts:
        try:
            bound = server.add_insecure_port(f"{one}:{port}")
        except RuntimeError:
            bound = 0
        if bound:
            port, bound_any = bound, True
            continue
        code, reason = _why_not(one, port)
        if code in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) and len(hosts) > 1:
            skipped.append(f"{one} ({reason})")
            continue
        raise OSError(f"cannot listen on {one}:{port}{also}: {reason}")
    if not bound_any:
        raise OSError(f"cannot listen on {address}{also}: {'; '.join(skipped)}")
    if skipped:
        log.info("listening on %s without %s", address, ", ".join(skipped))
    return port


def _port_free_on_all(hosts: list[str], attempts: int = 20) -> int:
    """A port that no program holds on any of ``hosts`` (those this host can have), for port 0."""
    with contextlib.ExitStack() as held:  # each port tried stays held: the next pick is another
        for _ in range(attempts):
            try:
                first = held.enter_context(_socket_for(hosts[0]))
                first.bind((hosts[0].strip("[]"), 0))
            except OSError:
                return 0  # the binding itself will say why
            port = first.getsockname()[1]
            free = (None, errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)
            if all(_why_not(other, port)[0] in free for other in hosts[1:]):
                return port
    return 0


def _socket_for(host: str) -> socket.socket:
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: TIME_WAIT is no obstacle
    return probe


def _why_not(host: str, port: int) -> tuple[int | None, str]:
    """Why a host and port cannot be listened on, as the system says it (gRPC's error does not):
    (errno, reason), errno None when a plain socket can bind it."""
    try:
        with _socket_for(host) as probe:
            probe.bind((host.strip("[]"), port))
    except OSError as exc:
        return exc.errno, exc.strerror or str(exc)
    return None, "gRPC could not bind it (GRPC_VERBOSITY=debug tells why)"
