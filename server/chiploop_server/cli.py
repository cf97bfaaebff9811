"""The daemon's commands: ``serve`` (run it) and ``health`` (ask one whether it serves).

``register(subparsers)`` adds them to any argparse parser: ``chiploop serve`` and
``python -m chiploop_server serve`` are the same command.
"""

from __future__ import annotations

import argparse
import sys

from chiploop.errors import ChiploopError

from chiploop_server.config import DaemonConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the chip daemon (gRPC)",
        description="Run the chip daemon. Settings: flags > CHIPLOOP_* environment > --config TOML file > defaults.",
    )
    defaults = DaemonConfig()
    serve.add_argument("--address", help=f"HOST:PORT to listen on (default {defaults.address}; port 0: any free port)")
    serve.add_argument("--backend", help="sim | speck | specksim (default sim)")
    serve.add_argument("--workers", type=int, help="threads the backend may use (default 1)")
    serve.add_argument("--config", help="a TOML file with any of these settings")
    serve.add_argument("--max-message-bytes", type=int, help=f"largest request or response, at least 4096 (default {defaults.max_message_bytes})")
    serve.add_argument("--max-queue", type=int, help=f"jobs that may wait for the device (default {defaults.max_queue})")
    serve.add_argument("--max-models", type=int, help=f"deployed models kept (default {defaults.max_models})")
    serve.add_argument("--max-sessions", type=int, help=f"stream sessions kept (default {defaults.max_sessions})")
    serve.add_argument("--max-session-events", type=int, help=f"output events a session keeps, the newest (default {defaults.max_session_events}; 0: none)")
    serve.add_argument("--max-streams", type=int, help=f"streams open at once, at most max_sessions (default {defaults.max_streams})")
    serve.add_argument("--session-ttl-s", type=float, help=f"seconds an ended session stays readable (default {defaults.session_ttl_s:g})")
    serve.add_argument("--grace-s", type=float, help=f"seconds running calls get on SIGTERM, SIGINT or SIGHUP (default {defaults.grace_s:g})")
    serve.add_argument("--port-file", help="write the bound port to this file once serving (removed when the daemon stops)")
    serve.add_argument("--parent-pid", type=int, help="stop once this process is no longer the daemon's parent")
    serve.add_argument("--no-warm-up", dest="warm_up", action="store_const", const=False, help="skip compiling kernels at start")
    serve.add_argument("--log-level", help="DEBUG | INFO | WARNING | ERROR | CRITICAL (default INFO)")
    serve.set_defaults(func=run_serve)

    check = subparsers.add_parser("health", help="exit 0 when the daemon at ADDRESS serves (for container health checks)")
    check.add_argument(
        "address", nargs="?",
        help="HOST:PORT (default: the daemon's own address setting, CHIPLOOP_ADDRESS or its default; "
        "a wildcard host is asked on loopback)",
    )  # fmt: skip
    check.add_argument("--timeout", type=float, default=3.0)
    check.set_defaults(func=run_health)


_SETTINGS = (
    "address", "backend", "workers", "config", "max_message_bytes", "max_queue", "max_models",
    "max_sessions", "max_session_events", "max_streams", "session_ttl_s", "grace_s", "port_file", "parent_pid", "warm_up",
    "log_level",
)  # fmt: skip


def run_serve(args: argparse.Namespace) -> int:
    from chiploop_server import config
    from chiploop_server.daemon import serve

    try:
        settings = config.load({name: getattr(args, name, None) for name in _SETTINGS})
        return serve(settings)
    except ChiploopError as exc:
        print(f"chiploop serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"chiploop serve: {exc}", file=sys.stderr)
        return 1


def run_health(args: argparse.Namespace) -> int:
    import grpc
    from chiploop.client import check_address, checked_timeout
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        address, timeout = check_address(args.address or own_address()), checked_timeout(args.timeout)
    except ChiploopError as exc:
        print(f"chiploop health: {exc}", file=sys.stderr)
        return 2
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError as exc:
            print(f"{address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def own_address() -> str:
    """Where this machine's daemon listens by its settings (environment, defaults), to ask it there."""
    from chiploop_server import config

    host, _, port = config.load({}).address.rpartition(":")
    return f"{config.reachable_host(host)}:{port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chiploop_server", description="The chiploop daemon.")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)
