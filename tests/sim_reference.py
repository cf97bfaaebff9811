"""A small, obviously correct, slow simulator: the oracle for the fast one's property tests.

Plain Python: dicts of neuron states, loops, recursion for the depth-first
order, a deque for the breadth-first one. Written from the contract
(chip-model.md and docs/simulator.md), sharing no code with chiploop_server.sim.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from chiploop.run import Readout
from chiploop.spec import NetworkSpec

INT16_MIN, INT16_MAX = -32768, 32767


def saturate(v: int) -> int:
    return max(INT16_MIN, min(INT16_MAX, v))


class _Net:
    def __init__(self, spec: NetworkSpec) -> None:
        self.spec = spec
        self.layers = spec.layers
        shapes = spec.layer_shapes()
        self.in_shape = [s[0] for s in shapes]
        self.out_shape = [s[1] for s in shapes]
        self.recorded = [not layer.destinations or i in spec.monitor for i, layer in enumerate(self.layers)]

    def neurons_hit(self, layer: int, y: int, x: int):
        """(oy, ox, ky, kx) of every output position whose receptive field holds input (y, x), row-major."""
        lay = self.layers[layer]
        _, h, w = self.out_shape[layer]
        kh, kw = lay.kernel_size
        for oy in range(h):
            ky = y + lay.padding[0] - oy * lay.stride[0]
            if not 0 <= ky < kh:
                continue
            for ox in range(w):
                kx = x + lay.padding[1] - ox * lay.stride[1]
                if 0 <= kx < kw:
                    yield oy, ox, ky, kx

    def map_input(self, x: int, y: int, p: int):
        """(c, y, x) entering layer 0, or None when the crop drops the event."""
        inp = self.spec.input
        y, x = y // inp.pool[0], x // inp.pool[1]
        y0, y1, x0, x1 = inp.window
        if not (y0 <= y < y1 and x0 <= x < x1):
            return None
        y, x = y - y0, x - x0
        if inp.flip_y:
            y = (y1 - y0 - 1) - y
        if inp.flip_x:
            x = (x1 - x0 - 1) - x
        return (0 if inp.merge_polarities else p), y, x


class _Sample:
    """One sample's run; results in plain Python containers."""

    def __init__(self, net: _Net, readout: Readout) -> None:
        self.net = net
        self.readout = readout
        n = len(net.layers)
        self.v = [dict() for _ in range(n)]  # (k, oy, ox) -> int
        self.out_events: list[tuple[int, int, int, int, int]] = []
        self.layer_spikes = [0] * n
        self.synops = 0
        self.counts = {
            i: np.zeros((readout.num_bins, *net.out_shape[i]), np.int64) for i in range(n) if net.recorded[i]
        }

    def state(self, layer: int) -> np.ndarray:
        out = np.zeros(self.net.out_shape[layer], np.int64)
        for (k, oy, ox), v in self.v[layer].items():
            out[k, oy, ox] = v
        return out

    def record(self, layer: int, k: int, oy: int, ox: int, t: int) -> None:
        self.layer_spikes[layer] += 1
        if not self.net.recorded[layer]:
            return
        self.out_events.append((layer, k, oy, ox, t))
        r = self.readout
        if r.t0_us <= t < r.t_end_us:
            self.counts[layer][(t - r.t0_us) // r.bin_us, k, oy, ox] += 1

    # --- the asynchronous chip -------------------------------------------------------------
    def neuron_step(self, layer: int, key, add: int) -> bool:
        """Add, saturate, fire at most once, reset, clamp low; True if it fired."""
        lay = self.net.layers[layer]
        v = saturate(self.v[layer].get(key, 0) + add)
        fired = v >= lay.threshold_high
        if fired:
            v = 0 if lay.reset == "zero" else v - lay.threshold_high
        if v < lay.threshold_low:
            v = lay.threshold_low
        self.v[layer][key] = v
        return fired

    def event_spikes(self, layer: int, c: int, y: int, x: int) -> list:
        lay = self.net.layers[layer]
        fired = []
        for oy, ox, ky, kx in self.net.neurons_hit(layer, y, x):
            for k in range(lay.out_channels):
                self.synops += 1
                if self.neuron_step(layer, (k, oy, ox), int(lay.weights[k, c, ky, kx])):
                    fired.append((k, oy, ox))
        return sorted(fired)  # scan order (k, oy, ox)

    def tick_spikes(self, layer: int) -> list:
        lay = self.net.layers[layer]
        f, h, w = self.net.out_shape[layer]
        fired = []
        for k in range(f):
            for oy in range(h):
                for ox in range(w):
                    if self.neuron_step(layer, (k, oy, ox), int(lay.leak[k])):
                        fired.append((k, oy, ox))
        return fired

    def deliveries(self, layer: int, spike, t: int):
        """Where one spike of a layer goes: [(dest, k, py, px, t)], destinations in order."""
        lay = self.net.layers[layer]
        k, oy, ox = spike
        _, h, w = self.net.out_shape[layer]
        py, px = oy // lay.pool[0], ox // lay.pool[1]
        if py >= h // lay.pool[0] or px >= w // lay.pool[1]:
            return []
        return [(d, k, py, px, t) for d in lay.destinations]

    def emit(self, layer: int, spikes: list, t_update: int) -> int:
        ts = t_update + self.net.spec.hop_latency_us
        for k, oy, ox in spikes:
            self.record(layer, k, oy, ox, ts)
        return ts

    def depth_first(self, layer: int, spikes: list, t_update: int) -> None:
        ts = self.emit(layer, spikes, t_update)
        for spike in spikes:
            for d, k, y, x, t in self.deliveries(layer, spike, ts):
                self.depth_first(d, self.event_spikes(d, k, y, x), t)

    def breadth_first(self, layer: int, spikes: list, t_update: int) -> None:
        queue = deque()
        while True:
            ts = self.emit(layer, spikes, t_update)
            for spike in spikes:
                queue.extend(self.deliveries(layer, spike, ts))
            if not queue:
                return
            layer, k, y, x, t_update = queue.popleft()
            spikes = self.event_spikes(layer, k, y, x)

    def run_async(self, items: list, breadth_first: bool, last_t: int = -1) -> dict:
        """items: (c, y, x, t) entering layer 0, in order; last_t: the last input event's time, dropped
        or not (the leak clock runs up to it). Returns snapshots {layer: [T, f, H, W]}."""
        r, net = self.readout, self.net
        cascade = self.breadth_first if breadth_first else self.depth_first
        next_tick = {i: lay.leak_period_us for i, lay in enumerate(net.layers) if lay.leak is not None}
        snaps = {m: [] for m in r.membrane_layers}

        def pass_time(until: int) -> None:
            while True:
                tick_at = min(next_tick.values(), default=None)
                bin_index = len(next(iter(snaps.values()))) if snaps else r.num_bins
                bin_end = r.t0_us + (bin_index + 1) * r.bin_us if bin_index < r.num_bins else None
                if bin_end is not None and bin_end <= until and (tick_at is None or bin_end <= tick_at):
                    for m in snaps:
                        snaps[m].append(self.state(m))
                elif tick_at is not None and tick_at <= until:
                    layer = min(i for i, t in next_tick.items() if t == tick_at)
                    next_tick[layer] += net.layers[layer].leak_period_us
                    cascade(layer, self.tick_spikes(layer), tick_at)
                else:
                    return

        for c, y, x, t in items:
            pass_time(t)
            cascade(0, self.event_spikes(0, c, y, x), t)
        pass_time(max(r.t_end_us - 1, last_t))
        for m in snaps:
            while len(snaps[m]) < r.num_bins:
                snaps[m].append(self.state(m))
        return {m: np.stack(s) for m, s in snaps.items()}

    # --- the synchronous counterpart ----------------------------------------------------------
    def run_sync(self, items: list) -> dict:
        r, net = self.readout, self.net
        n = len(net.layers)
        snaps = {m: [] for m in r.membrane_layers}
        for b in range(r.num_bins):
            start, end = r.t0_us + b * r.bin_us, r.t0_us + (b + 1) * r.bin_us
            frames = [np.zeros(net.in_shape[i], np.int64) for i in range(n)]
            for c, y, x, t in items:
                if start <= t < end:
                    frames[0][c, y, x] += 1
            for i, lay in enumerate(net.layers):
                f, h, w = net.out_shape[i]
                total = np.zeros((f, h, w), np.int64)
                cin, hin, win = net.in_shape[i]
                for c in range(cin):
                    for y in range(hin):
                        for x in range(win):
                            count = int(frames[i][c, y, x])
                            if count == 0:
                                continue
                            for oy, ox, ky, kx in net.neurons_hit(i, y, x):
                                for k in range(f):
                                    total[k, oy, ox] += count * int(lay.weights[k, c, ky, kx])
                                    self.synops += count
                if lay.leak is not None:
                    ticks = sum(1 for m in range(1, end // lay.leak_period_us + 1) if start <= m * lay.leak_period_us < end)
                    total += np.asarray(lay.leak, np.int64)[:, None, None] * ticks
                for k in range(f):
                    for oy in range(h):
                        for ox in range(w):
                            v = saturate(self.v[i].get((k, oy, ox), 0) + int(total[k, oy, ox]))
                            spikes = 0
                            if v >= lay.threshold_high:
                                if lay.reset == "zero":
                                    spikes, v = 1, 0
                                else:
                                    spikes = v // lay.threshold_high
                                    v -= spikes * lay.threshold_high
                            v = max(v, lay.threshold_low)
                            self.v[i][(k, oy, ox)] = v
                            for _ in range(spikes):
                                self.layer_spikes[i] += 1
                                if net.recorded[i]:
                                    self.out_events.append((i, k, oy, ox, start))
                                    self.counts[i][b, k, oy, ox] += 1
                            for d, kk, py, px, _t in self.deliveries(i, (k, oy, ox), start) if spikes else []:
                                frames[d][kk, py, px] += spikes
            for m in snaps:
                snaps[m].append(self.state(m))
        return {m: np.stack(s) for m, s in snaps.items()}


def reference_run(spec: NetworkSpec, events: np.ndarray, readout: Readout) -> dict:
    """One sample (DVS_EVENT_DTYPE, time-sorted) through the reference.

    Returns {"output_events": [(layer, k, y, x, t)], "counts": {layer: [T, f, H, W]},
    "membranes": {layer: [T, f, H, W]}, "counters": [input, dropped, synops, outputs, spikes per layer]}.
    """
    net = _Net(spec)
    sample = _Sample(net, readout)
    items, dropped = [], 0
    for e in events:
        mapped = net.map_input(int(e["x"]), int(e["y"]), int(e["p"]))
        if mapped is None:
            dropped += 1
        else:
            items.append((*mapped, int(e["t"])))
    if readout.mode == "sync":
        membranes = sample.run_sync(items)
    else:
        last_t = int(events["t"][-1]) if len(events) else -1
        membranes = sample.run_async(items, breadth_first=readout.mode == "breadth_first", last_t=last_t)
    counters = [len(events), dropped, sample.synops, len(sample.out_events), *sample.layer_spikes]
    return {
        "output_events": sample.out_events,
        "counts": sample.counts,
        "membranes": membranes,
        "counters": counters,
    }
