"""The checked-in generated code must be what the .proto generates (make proto rewrites it)."""

from __future__ import annotations

import importlib.util

import pytest
from chiploop_server import protogen


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools (dev extra) not installed")
def test_generated_code_matches_the_proto():
    stale = protogen.drifted()
    assert not stale, f"stale generated code: {stale}; run `python -m chiploop_server.protogen` and commit"


def test_generated_service_has_every_rpc():
    from chiploop.v1 import chiploop_pb2

    service = chiploop_pb2.DESCRIPTOR.services_by_name["Chip"]
    assert set(service.methods_by_name) == {
        "GetInfo",
        "Deploy",
        "UpdateWeights",
        "Run",
        "StreamEvents",
        "ReadOutputs",
        "ReadMembranes",
        "Reset",
    }
