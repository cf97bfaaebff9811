"""What a run asks for (Readout) and what it returns (RunResult), as plain objects.

The same objects are produced by the simulator in-process, by every backend of
the daemon, and by ``ChipClient.run`` after decoding the wire message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from chiploop.errors import InvalidArgument, check_int
from chiploop.events import CHIP_EVENT_DTYPE, DVS_EVENT_DTYPE, MAX_TIME_US, concatenate_events

if TYPE_CHECKING:
    from chiploop.spec import NetworkSpec

RunMode = Literal["depth_first", "breadth_first", "sync"]
RUN_MODES: tuple[str, ...] = ("depth_first", "breadth_first", "sync")

#: Columns of RunResult.counters before the per-layer spike counts.
COUNTER_NAMES: tuple[str, ...] = ("input_events", "dropped_events", "synops", "output_events")

#: A readout may ask for at most this many bins (a guard against absurd requests).
MAX_BINS = 100_000

#: Threads one run may use (the simulator's samples in parallel; the daemon's ``workers``).
MAX_WORKERS = 1 << 16


@dataclass(frozen=True)
class Readout:
    """Time bins [t0 + i*bin, t0 + (i+1)*bin), i < num_bins, and what to read in them.

    membrane_layers: layers whose states are snapshot at the end of every bin.
    spatial_counts: spike counts as [T, f, H, W] instead of [T, f].
    mode: the chip's depth-first order, samna specksim's breadth-first order, or
    the synchronous time-stepped integer counterpart (bins are its time steps).
    """

    t0_us: int = 0
    bin_us: int = 1000
    num_bins: int = 1
    membrane_layers: tuple[int, ...] = ()
    spatial_counts: bool = False
    mode: RunMode = "depth_first"

    def __post_init__(self) -> None:
        object.__setattr__(self, "membrane_layers", tuple(int(m) for m in self.membrane_layers))

    def check(self, n_layers: int) -> None:
        check_int(self.bin_us, "readout.bin_us", 1, MAX_TIME_US)
        check_int(self.num_bins, "readout.num_bins", 1, MAX_BINS)
        check_int(self.t0_us, "readout.t0_us", 0, MAX_TIME_US)
        if self.t_end_us > MAX_TIME_US:
            raise InvalidArgument("readout", f"the bins end at {self.t_end_us} us, past the latest time {MAX_TIME_US}")
        if self.mode not in RUN_MODES:
            raise InvalidArgument("readout.mode", f"must be one of {RUN_MODES}, got {self.mode!r}")
        for m in self.membrane_layers:
            if not 0 <= m < n_layers:
                raise InvalidArgument("readout.membrane_layers", f"no layer {m} (network has {n_layers})")

    @property
    def t_end_us(self) -> int:
        return int(self.t0_us) + int(self.bin_us) * int(self.num_bins)  # Python ints: no overflow


@dataclass
class RunResult:
    """The outputs of a batch of samples.

    output_events: chip events (CHIP_EVENT_DTYPE) of all samples, concatenated;
        sample i owns output_events[output_offsets[i]:output_offsets[i + 1]].
    counts: per output or monitored layer, int32 [n, T, f] (or [n, T, f, H, W]).
    membranes: per requested layer, int16 [n, T, f, H, W], the state at each bin's end.
    counters: int64 [n, 4 + layers]: COUNTER_NAMES, then spikes emitted per layer.
    """

    output_events: np.ndarray
    output_offsets: np.ndarray
    counts: dict[int, np.ndarray] = field(default_factory=dict)
    membranes: dict[int, np.ndarray] = field(default_factory=dict)
    counters: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    compute_seconds: float = 0.0

    @property
    def num_samples(self) -> int:
        return int(self.output_offsets.shape[0]) - 1

    def sample_events(self, i: int) -> np.ndarray:
        return self.output_events[self.output_offsets[i] : self.output_offsets[i + 1]]

    def counter(self, name: str) -> np.ndarray:
        return self.counters[:, COUNTER_NAMES.index(name)]

    @staticmethod
    def concatenate(parts: list[RunResult]) -> RunResult:
        """Join the results of consecutive chunks of one batch."""
        if len(parts) == 1:
            return parts[0]
        offsets = [np.zeros(1, np.int64)]
        base = 0
        for p in parts:
            offsets.append(p.output_offsets[1:] + base)
            base += int(p.output_offsets[-1])
        return RunResult(
            output_events=concatenate_events([p.output_events.astype(CHIP_EVENT_DTYPE, copy=False) for p in parts]),
            output_offsets=np.concatenate(offsets),
            counts={k: np.concatenate([p.counts[k] for p in parts]) for k in parts[0].counts},
            membranes={k: np.concatenate([p.membranes[k] for p in parts]) for k in parts[0].membranes},
            counters=np.concatenate([p.counters for p in parts]),
            compute_seconds=sum(p.compute_seconds for p in parts),
        )


def event_count_index(
    spec: NetworkSpec, events: np.ndarray, offsets: np.ndarray, readout: Readout
) -> tuple[np.ndarray, int, dict[int, tuple[slice, tuple[int, ...]]]]:
    """Where each chip event counts: its index into one flat array of ``size`` holding the counts
    of every recorded layer (output or monitored), and that array's layout, ``{layer: (slice,
    shape)}``. Events outside the readout's bins or of unrecorded layers are left out."""
    layers = sorted(set(spec.output_layers) | set(spec.monitor))
    shapes = [out for _, out in spec.layer_shapes()]
    n, t = offsets.size - 1, readout.num_bins
    layout, size = {}, 0
    base = np.zeros(len(shapes), np.int64)
    recorded = np.zeros(len(shapes), bool)
    for i in layers:
        shape = (n, t, *shapes[i]) if readout.spatial_counts else (n, t, shapes[i][0])
        base[i], recorded[i] = size, True
        layout[i] = (slice(size, size + int(np.prod(shape))), shape)
        size += int(np.prod(shape))
    f, h, w = (np.array([s[j] for s in shapes], np.int64) for j in range(3))
    # In-place arithmetic on one int64 array, and no copy of the events when all of them count
    # (the usual case): this runs on cil-bptt's critical path, ~600K events per batch of 64.
    layer = events["layer"]
    b = events["t"] - readout.t0_us
    b //= readout.bin_us
    keep = recorded[layer]
    keep &= b >= 0
    keep &= b < t
    if keep.all():
        sample = np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))
    else:
        kept = np.flatnonzero(keep)
        layer, b, events = layer[kept], b[kept], events[kept]
        sample = np.searchsorted(offsets, kept, side="right") - 1
    flat = sample * t
    flat += b
    flat *= f[layer]
    flat += events["k"]
    if readout.spatial_counts:
        flat *= h[layer]
        flat += events["y"]
        flat *= w[layer]
        flat += events["x"]
    flat += base[layer]
    return flat, size, layout


def bin_counts(spec: NetworkSpec, events: np.ndarray, offsets: np.ndarray, readout: Readout) -> dict[int, np.ndarray]:
    """Spike counts of the recorded layers per sample and bin, from their chip events: what a
    run's ``counts`` hold, for backends that return events alone."""
    flat, size, layout = event_count_index(spec, events, offsets, readout)
    total = np.bincount(flat, minlength=size).astype(np.int32)
    return {i: total[part].reshape(shape) for i, (part, shape) in layout.items()}


def pack_samples(samples: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A list of per-sample event arrays -> (concatenated events, offsets [n + 1])."""
    offsets = np.zeros(len(samples) + 1, np.int64)
    offsets[1:] = np.cumsum([len(s) for s in samples])
    if samples:
        events = concatenate_events(samples)
    else:
        events = np.zeros(0, DVS_EVENT_DTYPE)
    return events, offsets
