"""Shared fixtures: a real daemon on loopback, a client to it, small networks, bundled N-MNIST samples."""

from __future__ import annotations

import os

import numpy as np
import pytest
from chiploop.data.nmnist import default_data_dir
from chiploop.spec import InputLayer, Layer, NetworkSpec

DATA = default_data_dir()
"""The bundled N-MNIST samples (``$CHIPLOOP_NMNIST_DIR`` overrides)."""
needs_data = pytest.mark.skipif(not (DATA / "train" / "labels.csv").is_file(), reason=f"no N-MNIST data at {DATA}")


def small_spec(seed: int = 0, threshold: int = 6, monitor: tuple[int, ...] = ()) -> NetworkSpec:
    """A quick two-layer network for N-MNIST-sized input (34x34, 2 polarities):
    pool 2 at the input -> conv 2->4 3x3 stride 2 (8x8) -> fully connected 4x8x8 -> 10."""
    rng = np.random.default_rng(seed)
    return NetworkSpec(
        layers=(
            Layer(
                weights=rng.integers(-2, 6, size=(4, 2, 3, 3)).astype(np.int8),
                threshold_high=threshold,
                stride=(2, 2),
                destinations=(1,),
            ),
            Layer(weights=rng.integers(-2, 5, size=(10, 4, 8, 8)).astype(np.int8), threshold_high=threshold),
        ),
        input=InputLayer(sensor_size=(34, 34), pool=(2, 2)),
        monitor=monitor,
    )


@pytest.fixture(scope="session")
def nmnist_samples() -> list[np.ndarray]:
    """The first 16 bundled N-MNIST samples (DVS_EVENT_DTYPE); skips when the data is absent."""
    from chiploop.data.nmnist import NMNIST

    if not DATA.exists():
        pytest.skip(f"bundled N-MNIST samples not found at {DATA} (set CHIPLOOP_NMNIST_DIR)")
    data = NMNIST(DATA)
    return [data[i][0] for i in range(16)]


@pytest.fixture(scope="session")
def daemon():
    """A real daemon (simulator backend) in a child process on a free loopback port, for the whole session."""
    from chiploop_server.local import LocalDaemon

    with LocalDaemon(backend="sim", workers=1, env={"CHIPLOOP_LOG_LEVEL": os.environ.get("CHIPLOOP_LOG_LEVEL", "INFO")}) as d:
        yield d


@pytest.fixture
def client(daemon):
    from chiploop.client import ChipClient

    with ChipClient(daemon.address, timeout=60.0) as c:
        yield c
