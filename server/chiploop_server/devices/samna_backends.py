"""The samna backends: ``speck`` (a Speck dev board) and ``specksim`` (samna's own simulator).

Loaded only when SynSense's real samna is installed (see ``real_samna_installed``):
samna and ``sinabs.backend.dynapcnn`` are imported inside the classes, never at
module import. NOT EXERCISED on the machines this was written on (no real samna,
no board): ``tests/test_backends.py`` runs the same contract tests on them as on
``sim`` where samna (``-m samna``) or a board (``-m hardware``) is present.

What these backends do, and what they refuse (InvalidArgument naming the field):
- The DVS input stage (pool, crop, flip, merge) runs on the host, exactly as the
  simulator's, and the resulting (channel, y, x) spikes enter layer 0 directly,
  as sinabs does when the chip's DVS layer is not used.
- Square kernels and square pooling only (sinabs' and samna's configuration have
  one kernel size and one pooling per destination); ``specksim`` takes only a chain
  of layers (one destination each), since its graph is sequential.
- No membrane snapshots (``readout.membrane_layers`` must be empty): reading the
  chip's neuron states needs a round of ReadNeuronValue events per bin, not built yet.
- Modes: ``speck`` runs depth_first (the chip's order), ``specksim`` breadth_first.
- One leak period for the whole network (the chip has one slow clock).
- Counters: input and dropped events, output events and spikes of the recorded
  layers are counted; synops and unrecorded layers' spikes are not observable (0).
- Every sample starts from zero states: the configuration's neuron states are
  reset before each sample (slow on a board, correct).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from chiploop.errors import BackendUnavailable, InvalidArgument
from chiploop.events import CHIP_EVENT_DTYPE, KeptEvents, check_dvs_events, concatenate_events
from chiploop.limits import SPECK
from chiploop.run import COUNTER_NAMES, Readout, RunResult, bin_counts
from chiploop.spec import NetworkSpec

from chiploop_server.devices.base import Device, Session

log = logging.getLogger("chiploop.samna")

N_COUNTERS = len(COUNTER_NAMES)

#: A board computes in real time: a sample (or a stream chunk) spanning longer than this is refused
#: rather than holding the device, and every job queued behind it, for that long.
MAX_REALTIME_SPAN_US = 60_000_000
#: How long output may keep coming after the input before the read stops: a positive leak on the
#: slow clock can keep a chip spiking for ever.
MAX_DRAIN_S = 2.0
POLL_S = 0.05


def check_supported(spec: NetworkSpec, backend: str) -> None:
    for i, layer in enumerate(spec.layers):
        ky, kx = layer.kernel_size
        if ky != kx:
            raise InvalidArgument(f"layers[{i}].weights", f"backend {backend} needs square kernels, got {ky}x{kx}")
        if layer.pool[0] != layer.pool[1]:
            raise InvalidArgument(f"layers[{i}].pool", f"backend {backend} needs square pooling, got {layer.pool}")
        if backend == "specksim" and len(layer.destinations) > 1:
            raise InvalidArgument(
                f"layers[{i}].destinations", "backend specksim runs a chain of layers (one destination each)"
            )
    if backend == "specksim" and spec.monitor:
        raise InvalidArgument("monitor", "backend specksim returns the last layer's spikes only")
    periods = {layer.leak_period_us for layer in spec.layers if layer.leak is not None}
    if len(periods) > 1:
        raise InvalidArgument("layers", f"backend {backend} has one leak clock; the layers ask for periods {sorted(periods)}")


def check_readout(readout: Readout, n_layers: int, mode: str, backend: str) -> None:
    readout.check(n_layers)
    if readout.membrane_layers:
        raise InvalidArgument("readout.membrane_layers", f"backend {backend} cannot snapshot membranes yet")
    if readout.mode != mode:
        raise InvalidArgument("readout.mode", f"backend {backend} runs {mode} only, got {readout.mode}")


def check_realtime_span(events: np.ndarray, offsets: np.ndarray, field: str) -> None:
    """Refuse samples (``offsets`` cuts ``events``, each sorted in time) longer than MAX_REALTIME_SPAN_US."""
    starts, ends = offsets[:-1], offsets[1:]
    full = ends > starts
    spans = events["t"][ends[full] - 1] - events["t"][starts[full]]
    if spans.size and spans.max() > MAX_REALTIME_SPAN_US:
        i = int(np.flatnonzero(full)[spans.argmax()])
        raise InvalidArgument(
            f"{field}[{i}]" if offsets.size > 2 else field,
            f"spans {int(spans.max())} us; the board runs in real time and takes at most {MAX_REALTIME_SPAN_US} us at once",
        )


def drain(read: Callable[[], list], limit_s: float = MAX_DRAIN_S, poll_s: float = POLL_S) -> list:
    """Everything ``read()`` returns until one poll finds nothing, or ``limit_s`` has passed."""
    received: list = []
    stop_at = time.monotonic() + limit_s
    while True:
        time.sleep(poll_s)
        new = read()
        if not new:
            return received
        received.extend(new)
        if time.monotonic() >= stop_at:
            log.warning("the chip still spikes %.1f s after its input: reading stopped there", limit_s)
            return received


class SamnaModel:
    """A validated spec with its cores and whatever the backend built for it."""

    def __init__(self, spec: NetworkSpec, cores: list[int], built: Any) -> None:
        self.spec = spec
        self.cores = cores
        self.layer_of_core = {core: layer for layer, core in enumerate(cores)}
        self.built = built


class SamnaDevice(Device):
    limits = SPECK
    mode = "depth_first"
    supports_membranes = False
    #: Whether the backend computes in real time (a board): input spans are then bounded.
    realtime = False

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "chip_model": self.chip_model(), "limits": self.limits}

    def chip_model(self) -> str:
        return self.limits.chip_model

    def deploy(self, spec: NetworkSpec) -> SamnaModel:
        from chiploop.limits import validate

        cores = validate(spec, self.limits)
        check_supported(spec, self.name)
        return SamnaModel(spec, cores, self.build(spec, cores))

    def update(self, handle: SamnaModel, updates: dict[int, dict[str, Any]]) -> SamnaModel:
        spec = handle.spec
        for index, fields in updates.items():
            spec = spec.with_layer(index, **fields)
        return self.deploy(spec)

    def run(self, handle: SamnaModel, events: np.ndarray, offsets: np.ndarray, readout: Readout) -> RunResult:
        started = time.perf_counter()
        spec = handle.spec
        check_readout(readout, len(spec.layers), self.mode, self.name)
        check_dvs_events(events, spec.input.sensor_size, "events", offsets=offsets)
        if self.realtime:
            check_realtime_span(events, offsets, "events")
        n = offsets.size - 1
        counters = np.zeros((n, N_COUNTERS + len(spec.layers)), np.int64)
        outputs = []
        for i in range(n):
            sample = events[offsets[i] : offsets[i + 1]]
            c, y, x, kept = spec.input.map_events(sample)
            counters[i, 0] = sample.size
            counters[i, 1] = int((~kept).sum())
            self.reset_states(handle)
            out = self.feed(handle, c[kept], y[kept], x[kept], sample["t"][kept])
            outputs.append(out)
            counters[i, 3] = out.size
            counters[i, N_COUNTERS:] = np.bincount(out["layer"], minlength=len(spec.layers))[: len(spec.layers)]
        output_offsets = np.zeros(n + 1, np.int64)
        output_offsets[1:] = np.cumsum([o.size for o in outputs])
        output_events = concatenate_events(outputs) if outputs else np.zeros(0, CHIP_EVENT_DTYPE)
        return RunResult(
            output_events=output_events,
            output_offsets=output_offsets,
            counts=bin_counts(spec, output_events, output_offsets, readout),
            counters=counters,
            compute_seconds=time.perf_counter() - started,
        )

    def open_session(self, handle: SamnaModel, readout: Readout, max_kept_events: int | None = None) -> Session:
        check_readout(readout, len(handle.spec.layers), self.mode, self.name)
        return SamnaSession(self, handle, readout, max_kept_events)

    # What each backend fills in.
    def build(self, spec: NetworkSpec, cores: list[int]) -> Any:
        raise NotImplementedError

    def reset_states(self, handle: SamnaModel) -> None:
        raise NotImplementedError

    def feed(self, handle: SamnaModel, c, y, x, t) -> np.ndarray:
        """Input spikes into layer 0 -> CHIP_EVENT_DTYPE events of the recorded layers."""
        raise NotImplementedError


class SamnaSession:
    def __init__(
        self, device: SamnaDevice, handle: SamnaModel, readout: Readout, max_kept_events: int | None = None
    ) -> None:
        self.device, self.handle, self.readout = device, handle, readout
        self._outputs = KeptEvents(max_kept_events)
        self.reset()

    def reset(self) -> None:
        self.device.reset_states(self.handle)
        self._outputs.clear()
        # Counted chunk by chunk (bins are absolute times), as the oldest events may be dropped.
        self._counts = bin_counts(self.handle.spec, np.zeros(0, CHIP_EVENT_DTYPE), np.array([0, 0]), self.readout)
        self._counters = np.zeros(N_COUNTERS + len(self.handle.spec.layers), np.int64)

    def feed(self, events: np.ndarray) -> np.ndarray:
        spec = self.handle.spec
        check_dvs_events(events, spec.input.sensor_size, "events")
        if self.device.realtime:
            check_realtime_span(events, np.array([0, events.size]), "events")
        c, y, x, kept = spec.input.map_events(events)
        out = self.device.feed(self.handle, c[kept], y[kept], x[kept], events["t"][kept])
        self._outputs.append(out)
        for layer, counts in bin_counts(spec, out, np.array([0, out.size]), self.readout).items():
            self._counts[layer] += counts
        self._counters[0] += events.size
        self._counters[1] += int((~kept).sum())
        self._counters[3] += out.size
        self._counters[N_COUNTERS:] += np.bincount(out["layer"], minlength=len(spec.layers))[: len(spec.layers)]
        return out

    def output_events(self, start: int | None = None, stop: int | None = None) -> np.ndarray:
        return self._outputs.read(start, stop)

    @property
    def first_kept_event(self) -> int:
        return self._outputs.first

    def counts(self) -> dict[int, np.ndarray]:
        return {layer: c[0].copy() for layer, c in self._counts.items()}

    def counters(self) -> np.ndarray:
        return self._counters.copy()

    def membranes(self, layers: tuple[int, ...]) -> dict[int, np.ndarray]:
        raise InvalidArgument("layers", f"backend {self.device.name} cannot read membranes yet")


def _chip_events(layer, k, y, x, t) -> np.ndarray:
    out = np.empty(len(t), CHIP_EVENT_DTYPE)
    out["layer"], out["k"], out["y"], out["x"], out["t"] = layer, k, y, x, t
    return out


class SpeckDevice(SamnaDevice):
    """A Speck 2f dev board through samna (configuration built with sinabs' Speck2FConfigBuilder)."""

    name = "speck"
    mode = "depth_first"
    modes = ("depth_first",)
    realtime = True

    def __init__(self, workers: int = 1) -> None:
        super().__init__(workers)
        import samna
        from sinabs.backend.dynapcnn.chips.speck2f import Speck2FConfigBuilder

        self._samna = samna
        self._builder = Speck2FConfigBuilder
        self._graphs: list = []
        boards = [d for d in samna.device.get_unopened_devices() if "Speck2f" in d.device_type_name]
        if not boards:
            raise BackendUnavailable("backend 'speck': no Speck 2f board found over USB")
        self._board = samna.device.open_device(boards[0])
        try:
            self._input = Speck2FConfigBuilder.get_input_buffer()
            self._output = Speck2FConfigBuilder.get_output_buffer()
            model = self._board.get_model()
            self._graphs = [samna.graph.EventFilterGraph(), samna.graph.EventFilterGraph()]
            self._graphs[0].sequential([self._input, model.get_sink_node()])
            self._graphs[1].sequential([model.get_source_node(), self._output])
            for graph in self._graphs:
                graph.start()
        except Exception as exc:
            self.close()  # the board stays free for the next attempt
            raise BackendUnavailable(f"backend 'speck': cannot set the board up: {exc}") from exc

    def chip_model(self) -> str:
        return f"{self.limits.chip_model} (dev board)"

    def build(self, spec: NetworkSpec, cores: list[int]) -> Any:
        import sinabs.layers as sl
        import torch
        from sinabs.backend.dynapcnn.dynapcnn_layer import DynapcnnLayer

        shapes = spec.layer_shapes()
        layers, destinations = {}, {}
        for i, (layer, (in_shape, _)) in enumerate(zip(spec.layers, shapes, strict=True)):
            f, c, k, _ = layer.weights.shape
            conv = torch.nn.Conv2d(c, f, k, stride=layer.stride, padding=layer.padding, bias=layer.leak is not None)
            conv.weight.data = torch.tensor(np.asarray(layer.weights), dtype=torch.float32)
            if layer.leak is not None:
                conv.bias.data = torch.tensor(np.asarray(layer.leak), dtype=torch.float32)
            reset = sl.activation.MembraneReset() if layer.reset == "zero" else sl.activation.MembraneSubtract()
            spk = sl.IAFSqueeze(
                batch_size=1, spike_threshold=float(layer.threshold_high),
                min_v_mem=float(layer.threshold_low), reset_fn=reset,
            )  # fmt: skip
            pools = [[layer.pool[0]] * 2] * max(1, len(layer.destinations))
            layers[i] = DynapcnnLayer(conv, spk, in_shape, pools, discretize=False)
            destinations[i] = list(layer.destinations) or [-1]
        config = self._builder.build_config(layers, dict(enumerate(cores)), destinations)
        recorded = set(spec.output_layers) | set(spec.monitor)
        self._builder.monitor_layers(config, [cores[i] for i in sorted(recorded)])
        periods = {layer.leak_period_us for layer in spec.layers if layer.leak is not None}
        return {"config": config, "leak_period_us": periods.pop() if periods else None}

    def reset_states(self, handle: SamnaModel) -> None:
        config = handle.built["config"]
        self._builder.reset_states(config)
        self._board.get_model().apply_configuration(config)
        if handle.built["leak_period_us"]:
            io = self._board.get_io_module()
            io.set_slow_clk(True)
            io.set_slow_clk_rate(int(round(1e6 / handle.built["leak_period_us"])))

    def feed(self, handle: SamnaModel, c, y, x, t) -> np.ndarray:
        spike = self._samna.speck2f.event.Spike
        first_core = handle.cores[0]
        events = []
        for ci, yi, xi, ti in zip(c.tolist(), y.tolist(), x.tolist(), t.tolist(), strict=True):
            ev = spike()
            ev.layer, ev.feature, ev.y, ev.x, ev.timestamp = first_core, ci, yi, xi, ti
            events.append(ev)
        self._output.get_events()  # drop anything left over
        stopwatch = self._board.get_stop_watch()
        stopwatch.reset()
        stopwatch.start()
        self._input.write(events)
        time.sleep((int(t[-1]) - int(t[0])) * 1e-6 if len(t) else 0.0)  # bounded: check_realtime_span
        received = drain(lambda: [e for e in self._output.get_events() if isinstance(e, spike)])
        stopwatch.stop()
        return _chip_events(
            [handle.layer_of_core[e.layer] for e in received], [e.feature for e in received],
            [e.y for e in received], [e.x for e in received], [e.timestamp for e in received],
        )  # fmt: skip

    def close(self) -> None:
        for graph in self._graphs:
            graph.stop()
        self._samna.device.close_device(self._board)


class SpecksimDevice(SamnaDevice):
    """samna's event-based Speck simulator (a sequential graph of filters, breadth-first)."""

    name = "specksim"
    mode = "breadth_first"
    modes = ("breadth_first",)

    def __init__(self, workers: int = 1) -> None:
        super().__init__(workers)
        import samna

        self._samna = samna

    def chip_model(self) -> str:
        return f"{self.limits.chip_model} (samna specksim)"

    def build(self, spec: NetworkSpec, cores: list[int]) -> Any:
        from samna.specksim.nodes import SpecksimConvolutionalFilterNode as ConvFilter
        from samna.specksim.nodes import SpecksimIAFFilterNode as IAFFilter
        from samna.specksim.nodes import SpecksimSumPoolingFilterNode as SumPoolFilter

        if any(layer.leak is not None for layer in spec.layers):
            raise InvalidArgument("layers", "backend specksim has no leak")
        if any(layer.reset != "subtract" for layer in spec.layers):
            raise InvalidArgument("layers", "backend specksim resets by subtraction only")
        graph = self._samna.graph.EventFilterGraph()
        filters: list = [self._samna.BasicSourceNode_specksim_events_spike()]
        iafs = []
        for (in_shape, out_shape), layer in zip(spec.layer_shapes(), spec.layers, strict=True):
            conv = ConvFilter()
            f, c, k, _ = layer.weights.shape
            conv.set_parameters(c, f, (k, k), tuple(in_shape[1:]), tuple(layer.stride), tuple(layer.padding))
            conv.set_weights(np.asarray(layer.weights, np.float64).tolist())
            iaf = IAFFilter()
            iaf.set_parameters(f, tuple(out_shape[1:]), float(layer.threshold_high), float(layer.threshold_low))
            filters += [conv, iaf]
            iafs.append(iaf)
            if layer.pool != (1, 1):
                pool = SumPoolFilter()
                pool.set_parameters(tuple(layer.pool), tuple(out_shape[1:]))
                filters.append(pool)
        filters.append(self._samna.BasicSinkNode_specksim_events_spike())
        members = graph.sequential(filters)
        return {"graph": graph, "members": members, "iafs": iafs}

    def reset_states(self, handle: SamnaModel) -> None:
        for iaf in handle.built["iafs"]:
            iaf.get_layer().reset_states()

    def feed(self, handle: SamnaModel, c, y, x, t) -> np.ndarray:
        built = handle.built
        spike = self._samna.specksim.events.Spike
        built["graph"].start()
        built["members"][0].write([spike(ci, yi, xi, ti) for ci, yi, xi, ti in zip(c.tolist(), y.tolist(), x.tolist(), t.tolist(), strict=True)])
        received = drain(built["members"][-1].get_events)
        built["graph"].stop()
        # The sink sits after the last layer's pooling; spikes leave the last layer only.
        last = len(handle.spec.layers) - 1
        return _chip_events(
            [last] * len(received), [e.feature for e in received], [e.y for e in received],
            [e.x for e in received], [e.timestamp for e in received],
        )  # fmt: skip


def open_samna_device(name: str, workers: int = 1) -> Device:
    if name == "speck":
        return SpeckDevice(workers)
    if name == "specksim":
        return SpecksimDevice(workers)
    raise InvalidArgument("backend", f"unknown samna backend {name!r}")
