"""Compile (or load from numba's disk cache) every kernel before the first real request."""

from __future__ import annotations

import numpy as np
from chiploop.events import make_dvs_events
from chiploop.run import Readout
from chiploop.spec import InputLayer, Layer, NetworkSpec

from chiploop_server.sim.batch import run_batch
from chiploop_server.sim.network import SimNetwork
from chiploop_server.sim.session import SimSession


def warm_up() -> None:
    """Run a one-neuron network through every mode and a session (~30 s cold, under 1 s cached).

    The kernels are specialised on argument types only, so this covers every network.
    """
    layer = Layer(weights=np.ones((1, 1, 1, 1), np.int8), threshold_high=1, leak=np.ones(1, np.int16), leak_period_us=5)
    net = SimNetwork.from_spec(NetworkSpec(layers=(layer,), input=InputLayer(sensor_size=(1, 1), merge_polarities=True)))
    events = make_dvs_events([0], [0], [0], [3])
    offsets = np.array([0, 1], np.int64)
    for mode in ("depth_first", "breadth_first", "sync"):
        run_batch(net, events, offsets, Readout(bin_us=10, membrane_layers=(0,), mode=mode))
    SimSession(net, Readout(bin_us=10)).feed(events)
