"""The default backend: the built-in asynchronous chip simulator (chiploop_server.sim)."""

from __future__ import annotations

from typing import Any

import numpy as np
from chiploop.events import make_dvs_events
from chiploop.limits import SPECK
from chiploop.run import RUN_MODES, Readout, RunResult
from chiploop.spec import InputLayer, Layer, NetworkSpec

from chiploop_server.devices.base import Device, Session


class SimDevice(Device):
    """Speck simulated in software; ``workers`` samples of a batch run in parallel threads."""

    name = "sim"
    limits = SPECK

    def __init__(self, workers: int = 1) -> None:
        # Imported here so that the daemon's other backends never pay for the numba kernels.
        from chiploop_server import sim

        self._sim = sim
        self.workers = max(1, int(workers))

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "chip_model": f"{self.limits.chip_model} (simulated)",
            "limits": self.limits,
        }

    def deploy(self, spec: NetworkSpec) -> Any:
        return self._sim.SimNetwork.from_spec(spec)

    def update(self, handle: Any, updates: dict[int, dict[str, Any]]) -> Any:
        return handle.with_updates(updates)

    def run(self, handle: Any, events: np.ndarray, offsets: np.ndarray, readout: Readout) -> RunResult:
        # run_batch measures its own compute_seconds (validation and the kernels).
        return self._sim.run_batch(handle, events, offsets, readout, workers=self.workers)

    def open_session(self, handle: Any, readout: Readout, max_kept_events: int | None = None) -> Session:
        return self._sim.SimSession(handle, readout, max_kept_events=max_kept_events)

    def warm_up(self) -> None:
        """Compile the kernels (numba) before the first request instead of during it."""
        spec = NetworkSpec(
            layers=(Layer(weights=np.ones((2, 2, 3, 3), np.int8), threshold_high=2),),
            input=InputLayer(sensor_size=(8, 8)),
        )
        net = self.deploy(spec)
        events = make_dvs_events([1, 2, 3], [1, 2, 3], [0, 1, 0], [0, 10, 20])
        offsets = np.array([0, 3], np.int64)
        for mode in RUN_MODES:
            self.run(net, events, offsets, Readout(bin_us=10, num_bins=3, membrane_layers=(0,), mode=mode))
        session = self.open_session(net, Readout(bin_us=10, num_bins=3))
        session.feed(events)
        session.counts()
        session.membranes((0,))
