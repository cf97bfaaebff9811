"""Regenerate (or check) the Python code of the wire protocol.

    python -m chiploop_server.protogen           # write client/chiploop/v1/chiploop_pb2*.py(i)
    python -m chiploop_server.protogen --check   # exit 1 when the checked-in code drifted

The generated code is committed so that the runtime needs only protobuf and
grpcio; grpcio-tools (the dev extra, pinned so every checkout generates the same
bytes) is imported here only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"
PROTO_FILE = "chiploop/v1/chiploop.proto"
OUT_ROOT = REPO_ROOT / "client"
GENERATED = ("chiploop_pb2.py", "chiploop_pb2.pyi", "chiploop_pb2_grpc.py")


def generate(out_root: Path) -> None:
    """Run protoc on the .proto, writing chiploop/v1/*.py under ``out_root``."""
    try:
        from grpc_tools import protoc
    except ImportError:
        sys.exit("grpcio-tools is needed to regenerate the protocol code: pip install -e '.[dev]'")
    import importlib.resources

    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        str(PROTO_ROOT / PROTO_FILE),
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {PROTO_ROOT / PROTO_FILE}")


def drifted() -> list[str]:
    """Names of generated files that differ from what the .proto generates now."""
    target = OUT_ROOT / "chiploop" / "v1"
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = Path(tmp) / "chiploop" / "v1"
        return [
            name
            for name in GENERATED
            if not (target / name).exists() or (target / name).read_bytes() != (fresh / name).read_bytes()
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chiploop_server.protogen", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on drift")
    args = parser.parse_args(argv)
    if args.check:
        stale = drifted()
        if stale:
            print(
                f"generated protocol code is stale: {', '.join(stale)}; "
                "run `python -m chiploop_server.protogen` and commit the result",
                file=sys.stderr,
            )
            return 1
        print("generated protocol code matches the .proto")
        return 0
    generate(OUT_ROOT)
    print(f"wrote {', '.join(GENERATED)} to {OUT_ROOT / 'chiploop' / 'v1'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
