"""The ``chiploop`` command.

    chiploop serve --address HOST:PORT --backend sim|speck|specksim --workers N --config FILE
    chiploop info ADDRESS
    chiploop demo [ADDRESS]        (no ADDRESS: starts a local daemon for the demo)
    chiploop train | eval | experiment ...   (when the training package is installed)

Each group of commands registers itself with a ``register(subparsers)`` function;
the daemon's and the trainer's are found with importlib, so either may be absent.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from chiploop.errors import ChiploopError

#: Modules that add subcommands, in help order; a missing one is skipped.
COMMAND_MODULES = ("chiploop_server.cli", "chiploop.training.cli")


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chiploop", description="Chip-in-loop training of spiking networks on Speck, as a service."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        if _has_module(name):
            importlib.import_module(name).register(subparsers)

    info = subparsers.add_parser("info", help="show what a daemon runs: backend, chip, limits, load")
    info.add_argument("address", help="HOST:PORT of the daemon")
    info.add_argument("--token", help="bearer token (sent as authorization metadata)")
    info.add_argument("--timeout", type=float, default=10.0)
    info.set_defaults(func=run_info)

    demo = subparsers.add_parser(
        "demo", help="deploy a small network, run bundled N-MNIST samples, update weights, run again"
    )
    demo.add_argument("address", nargs="?", help="HOST:PORT of a daemon (default: start a local one)")
    demo.add_argument("--samples", type=int, default=8, help="how many bundled samples to run")
    demo.add_argument("--data", help="N-MNIST folder (default: $CHIPLOOP_NMNIST_DIR or the bundled samples)")
    demo.set_defaults(func=run_demo)
    return parser


def run_info(args: argparse.Namespace) -> int:
    from chiploop.client import ChipClient

    with ChipClient(args.address, token=args.token, timeout=args.timeout, retries=1) as chip:
        info = chip.info()
    limits = info.limits
    print(f"daemon        {args.address} (chiploop {info.server_version}, protocol v{info.protocol_version})")
    print(f"backend       {info.backend}  (available here: {', '.join(info.backends_available)})")
    print(f"chip          {info.chip_model}")
    busy = "busy" if info.device_busy else "idle"
    print(f"load          device {busy}, {info.queue_depth} queued, {info.models_deployed} models, {info.sessions_open} sessions")
    print(f"workers       {info.workers}; max message {info.max_message_bytes / 2**20:g} MiB")
    print(
        f"limits        {limits.cores} cores, <= {limits.max_destinations} destinations each, "
        f"weights {limits.weight_min}..{limits.weight_max}, states {limits.state_min}..{limits.state_max}"
    )
    print(
        f"              kernel <= {limits.max_kernel}, strides {'/'.join(map(str, limits.strides))}, "
        f"padding <= {limits.max_padding}, pooling {'/'.join(map(str, limits.pools))}, "
        f"channels <= {limits.max_channels}, input <= {limits.max_input_size}, output <= {limits.max_output_size}"
    )
    print(f"kernel memory {', '.join(str(k) for k in limits.kernel_memory)} words per core")
    print(f"neuron memory {', '.join(str(n) for n in limits.neuron_memory)} words per core")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from chiploop.demo import demo

    if args.address:
        return demo(args.address, samples=args.samples, data=args.data)
    from chiploop_server.local import LocalDaemon

    print("starting a local daemon (simulator backend) ...")
    with LocalDaemon(backend="sim") as daemon:
        return demo(daemon.address, samples=args.samples, data=args.data)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ChiploopError as exc:
        print(f"chiploop {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
