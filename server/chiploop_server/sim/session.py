"""SimSession: a live stream through the simulator, state kept across chunks."""

from __future__ import annotations

import numpy as np
from chiploop.errors import InvalidArgument
from chiploop.events import MAX_TIME_US, KeptEvents, check_dvs_events
from chiploop.run import Readout

from chiploop_server.sim.batch import (
    DROPPED_EVENTS,
    INPUT_EVENTS,
    MAX_SPIKES_PER_SAMPLE,
    N_COUNTERS,
    OUTPUT_EVENTS,
    SYNOPS,
    check_readout,
    check_tick_work,
    chip_events,
    count_layout,
    refuse_large_readout,
    runaway,
)
from chiploop_server.sim.kernel_async import initial_ticks, run_async
from chiploop_server.sim.network import S_OFS, SimNetwork

_NO_SNAPSHOTS = np.zeros(0, np.int16)


class SimSession:
    """One stream: DVS chunks in, the chip events they cause out; state persists until reset().

    The readout's bins define counts(); membranes() reads the current state. Only
    the asynchronous modes stream (a time step cannot close before its bin ends):
    a sync readout is refused. Leak ticks run up to the last event fed (or the
    time given to advance()). The newest ``max_kept_events`` chip events are kept for
    output_events() (None: all; the daemon bounds them). Not thread-safe: one caller at a time.
    """

    def __init__(
        self,
        net: SimNetwork,
        readout: Readout,
        max_spikes: int = MAX_SPIKES_PER_SAMPLE,
        max_kept_events: int | None = None,
    ) -> None:
        if not isinstance(net, SimNetwork):
            raise InvalidArgument("net", f"must be a SimNetwork, got {type(net).__name__}")
        check_readout(net, readout)
        if readout.mode == "sync":
            raise InvalidArgument("readout.mode", "a stream session runs depth_first or breadth_first, not sync")
        self.net = net
        self.readout = readout
        self.max_spikes = max_spikes
        self._cnt_ofs, self._cnt_shapes, cnt_size = count_layout(net, readout)
        refuse_large_readout(4 * cnt_size, "a stream session")  # read whole by every ReadOutputs
        self._mem_ofs = np.full(net.num_layers, -1, np.int64)
        self._counts = np.zeros(cnt_size, np.int32)
        self._outputs = KeptEvents(max_kept_events)
        self.reset()

    def reset(self) -> None:
        """States to zero, clock to 0, outputs, counts and counters cleared."""
        self._state = np.zeros(self.net.num_states, np.int16)
        self._next_tick = initial_ticks(self.net.meta)
        self._counts[:] = 0
        self._counters = np.zeros(N_COUNTERS + self.net.num_layers, np.int64)
        self._outputs.clear()
        self._last_t = 0

    @property
    def last_time_us(self) -> int:
        """The latest time fed (events must not go back before it)."""
        return self._last_t

    def feed(self, events: np.ndarray) -> np.ndarray:
        """Run a time-sorted chunk (times >= the last time fed); return the chip events it caused."""
        check_dvs_events(events, self.net.spec.input.sensor_size, field="events")
        if events.size and int(events["t"][0]) < self._last_t:
            raise InvalidArgument(
                "events[0].t", f"must be >= the last time fed ({self._last_t}), got {int(events['t'][0])}"
            )
        c, y, x, kept = self.net.spec.input.map_events(events)
        t = np.ascontiguousarray(events["t"][kept])
        until = int(events["t"][-1]) if events.size else self._last_t
        out = self._run(c[kept], y[kept], x[kept], t, until)
        # Counted once the chunk ran: a refused chunk leaves the session as it was.
        self._counters[INPUT_EVENTS] += events.size
        self._counters[DROPPED_EVENTS] += int((~kept).sum())
        return out

    def advance(self, t_us: int) -> np.ndarray:
        """Let time pass to t_us with no events: leak ticks up to it run; return the chip events caused."""
        if isinstance(t_us, bool) or not isinstance(t_us, (int, np.integer)) or not self._last_t <= t_us <= MAX_TIME_US:
            raise InvalidArgument(
                "t_us", f"must be an integer from the last time fed ({self._last_t}) to {MAX_TIME_US}, got {t_us!r}"
            )
        empty = np.zeros(0, np.int32)
        return self._run(empty, empty, empty, np.zeros(0, np.int64), int(t_us))

    def _run(self, c, y, x, t, until: int) -> np.ndarray:
        r = self.readout
        check_tick_work(self.net, self._last_t, until)
        keys, times, n_out, synops, _, spikes = run_async(
            self.net.meta, self.net.weights, self.net.leaks, c, y, x, t, r.mode == "breadth_first",
            int(self.net.spec.hop_latency_us), int(r.t0_us), int(r.bin_us), int(r.num_bins), r.spatial_counts,
            self._cnt_ofs, self._mem_ofs, self._state, self._next_tick, self._counts, _NO_SNAPSHOTS, 0, until,
            False, self._counters[N_COUNTERS:], self.max_spikes,
        )
        if spikes > self.max_spikes:
            self.reset()
            raise runaway(self.max_spikes, "this chunk (the session was reset)")
        self._last_t = until
        self._counters[SYNOPS] += synops
        self._counters[OUTPUT_EVENTS] += n_out
        out = chip_events(self.net, keys[:n_out], times[:n_out])
        self._outputs.append(out)
        return out

    def output_events(self, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """The chip events since open or reset (output and monitored layers) still kept, in emission
        order; those numbered ``start`` (default: the oldest kept) to ``stop``. A copy."""
        return self._outputs.read(start, stop)

    @property
    def first_kept_event(self) -> int:
        """The number of the oldest chip event still kept (0 until events were dropped)."""
        return self._outputs.first

    def counts(self) -> dict[int, np.ndarray]:
        """Spike counts in the readout's bins per output or monitored layer: int32 [T, f] (or [T, f, H, W])."""
        out = {}
        for layer, shape in self._cnt_shapes.items():
            ofs = int(self._cnt_ofs[layer])
            out[layer] = self._counts[ofs : ofs + int(np.prod(shape))].reshape(shape).copy()
        return out

    def counters(self) -> np.ndarray:
        """int64 [4 + layers]: input events, dropped, synops, output events, then spikes per layer."""
        return self._counters.copy()

    def membranes(self, layers=None) -> dict[int, np.ndarray]:
        """Current states, int16 [f, H, W] per layer (default: the readout's membrane layers)."""
        layers = self.readout.membrane_layers if layers is None else tuple(layers)
        out = {}
        for layer in layers:
            if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < self.net.num_layers:
                raise InvalidArgument("layers", f"no layer {layer!r} (network has {self.net.num_layers})")
            f, h, w = self.net.out_shape(layer)
            ofs = int(self.net.meta[layer, S_OFS])
            out[int(layer)] = self._state[ofs : ofs + f * h * w].reshape(h, w, f).transpose(2, 0, 1).copy()
        return out
