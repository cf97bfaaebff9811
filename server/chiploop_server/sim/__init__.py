"""The built-in event-driven chip simulator (the daemon's default backend).

Semantics: the shared chip-model contract, with every choice it leaves open
written down in docs/simulator.md.

    net = SimNetwork.from_spec(spec)
    result = run_batch(net, events, offsets, readout, workers=2)
    sess = SimSession(net, readout); sess.feed(chunk)
    warm_up()  # compile the kernels ahead of the first request (numba caches them on disk)
"""

from chiploop_server.sim.batch import run_batch
from chiploop_server.sim.network import SimNetwork
from chiploop_server.sim.session import SimSession
from chiploop_server.sim.warmup import warm_up

__all__ = ["SimNetwork", "SimSession", "run_batch", "warm_up"]
