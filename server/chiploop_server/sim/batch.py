"""run_batch: a batch of samples through the simulator, samples in parallel threads."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from chiploop.errors import InvalidArgument, ResourceExhausted, check_int
from chiploop.events import CHIP_EVENT_DTYPE, check_dvs_events, concatenate_events
from chiploop.run import COUNTER_NAMES, MAX_WORKERS, Readout, RunResult

from chiploop_server.sim.kernel_async import initial_ticks, run_async
from chiploop_server.sim.kernel_sync import run_sync
from chiploop_server.sim.network import HAS_LEAK, LEAK_PERIOD, SimNetwork

N_COUNTERS = len(COUNTER_NAMES)
INPUT_EVENTS, DROPPED_EVENTS, SYNOPS, OUTPUT_EVENTS = range(N_COUNTERS)

#: Spikes one sample (or one stream chunk) may cause before the run is refused: an
#: over-excited network's cascades grow without useful bound and would eat the host.
MAX_SPIKES_PER_SAMPLE = 10_000_000
#: Leak-tick work one call may need, in neuron updates (about 0.25 ns each here), checked
#: before running: about 2.5 s of the device thread, which nothing can interrupt once it runs.
MAX_TICK_WORK = 10_000_000_000
#: A tick costs this many neuron updates on top of its layer's neurons (about 320 ns a tick,
#: measured): a 1-neuron layer ticking every microsecond is not cheap.
TICK_OVERHEAD = 1300
#: Counts and snapshots of one batch (bytes), checked before allocating them.
MAX_RESULT_BYTES = 1 << 30


def check_tick_work(net: SimNetwork, t_from: int, t_until: int, samples: int = 1) -> None:
    """Refuse a time span whose leak ticks alone, over ``samples`` samples, would hold the device
    for more than seconds (e.g. a 1 us period over hours, or many empty samples of a long one)."""
    work = 0
    for layer, period in enumerate(net.meta[:, LEAK_PERIOD]):
        if net.meta[layer, HAS_LEAK]:
            ticks = max(0, t_until // int(period) - t_from // int(period))
            work += samples * ticks * (int(np.prod(net.out_shape(layer))) + TICK_OVERHEAD)
            if work > MAX_TICK_WORK:
                per = f" each, over {samples} samples" if samples > 1 else ""
                raise ResourceExhausted(
                    f"layers[{layer}].leak_period_us: {period} us over {t_until - t_from} us{per} needs more "
                    f"leak-tick work than {MAX_TICK_WORK} neuron updates (seconds of the chip's time); use a "
                    "longer period, a shorter window or fewer samples"
                )


def runaway(max_spikes: int, where: str) -> ResourceExhausted:
    return ResourceExhausted(
        f"{where} caused more than {max_spikes} spikes: the network is runaway "
        "(raise thresholds or lower weights)"
    )


def check_readout(net: SimNetwork, readout: Readout) -> None:
    if not isinstance(readout, Readout):
        raise InvalidArgument("readout", f"must be a chiploop.run.Readout, got {type(readout).__name__}")
    readout.check(net.num_layers)


def count_layout(net: SimNetwork, readout: Readout) -> tuple[np.ndarray, dict[int, tuple[int, ...]], int]:
    """Offsets of each recorded layer's counts in a sample's flat int32 buffer, their shapes, the size."""
    ofs = np.full(net.num_layers, -1, np.int64)
    shapes: dict[int, tuple[int, ...]] = {}
    size = 0
    for layer in net.recorded_layers():
        f, h, w = net.out_shape(layer)
        shape = (readout.num_bins, f, h, w) if readout.spatial_counts else (readout.num_bins, f)
        ofs[layer] = size
        shapes[layer] = shape
        size += int(np.prod(shape))
    return ofs, shapes, size


def snapshot_layout(net: SimNetwork, readout: Readout) -> tuple[np.ndarray, int]:
    """Offsets of each snapshot layer's [T, H, W, f] states in a sample's flat int16 buffer, the size."""
    ofs = np.full(net.num_layers, -1, np.int64)
    size = 0
    for layer in dict.fromkeys(readout.membrane_layers):
        ofs[layer] = size
        size += readout.num_bins * int(np.prod(net.out_shape(layer)))
    return ofs, size


def chip_events(net: SimNetwork, keys: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Kernel output (packed keys, times) -> CHIP_EVENT_DTYPE."""
    out = np.empty(keys.size, CHIP_EVENT_DTYPE)
    out["x"] = keys & 127
    out["y"] = (keys >> 7) & 127
    out["k"] = (keys >> 14) & 2047
    out["layer"] = keys >> 25
    out["t"] = times
    return out


def refuse_large_readout(result_bytes: int, what: str) -> None:
    """Refuse a readout whose counts and membranes would take more than MAX_RESULT_BYTES."""
    if result_bytes > MAX_RESULT_BYTES:
        raise ResourceExhausted(
            f"readout: counts and membranes of {what} would take {result_bytes / 2**30:.1f} GiB "
            f"(at most {MAX_RESULT_BYTES / 2**30:.0f}); ask for fewer bins, membrane layers or samples, "
            "or counts without spatial_counts"
        )


def run_batch(
    net: SimNetwork,
    events: np.ndarray,
    offsets: np.ndarray,
    readout: Readout,
    workers: int = 1,
    max_spikes: int = MAX_SPIKES_PER_SAMPLE,
) -> RunResult:
    """Run every sample (states from zero) and return the packed RunResult.

    Samples run in ``workers`` threads (the kernels release the GIL); the result
    does not depend on ``workers``. A sample causing more than ``max_spikes``
    spikes makes the whole call raise ResourceExhausted.
    """
    started = time.perf_counter()
    if not isinstance(net, SimNetwork):
        raise InvalidArgument("net", f"must be a SimNetwork, got {type(net).__name__}")
    check_readout(net, readout)
    check_int(workers, "workers", 1, MAX_WORKERS)
    check_dvs_events(events, net.spec.input.sensor_size, field="events", offsets=offsets)
    n = offsets.size - 1
    n_layers = net.num_layers
    if readout.mode != "sync":
        check_tick_work(net, 0, max(readout.t_end_us - 1, int(events["t"].max()) if events.size else 0), offsets.size - 1)

    c, y, x, kept = net.spec.input.map_events(events)
    sample_of = np.repeat(np.arange(n), np.diff(offsets))
    counters = np.zeros((n, N_COUNTERS + n_layers), np.int64)
    counters[:, INPUT_EVENTS] = np.diff(offsets)
    counters[:, DROPPED_EVENTS] = np.bincount(sample_of[~kept], minlength=n)
    kept_offsets = np.zeros(n + 1, np.int64)
    kept_offsets[1:] = np.cumsum(np.bincount(sample_of[kept], minlength=n))
    c, y, x, t = c[kept], y[kept], x[kept], np.ascontiguousarray(events["t"][kept])
    # Leak ticks run up to every input event, the dropped ones too: the chip's leak clock does not
    # depend on the input stage's filter (and a stream session, fed the same events, does the same).
    nonempty = offsets[1:] > offsets[:-1]
    last_t = np.full(n, -1, np.int64)
    last_t[nonempty] = events["t"][offsets[1:][nonempty] - 1]
    tick_until = np.maximum(last_t, readout.t_end_us - 1)

    cnt_ofs, cnt_shapes, cnt_size = count_layout(net, readout)
    mem_ofs, mem_size = snapshot_layout(net, readout)
    refuse_large_readout(n * (4 * cnt_size + 2 * mem_size), f"{n} samples")
    counts = np.zeros((n, cnt_size), np.int32)
    snaps = np.zeros((n, mem_size), np.int16)
    outputs: list[np.ndarray] = [np.zeros(0, CHIP_EVENT_DTYPE)] * n
    first_ticks = initial_ticks(net.meta)
    sync = readout.mode == "sync"
    bfs = readout.mode == "breadth_first"
    hop = int(net.spec.hop_latency_us)
    t0, bin_us, num_bins = int(readout.t0_us), int(readout.bin_us), int(readout.num_bins)

    output_bytes, output_lock = [0], threading.Lock()

    def one(i: int) -> None:
        a, b = kept_offsets[i], kept_offsets[i + 1]
        state = np.zeros(net.num_states, np.int16)
        layer_spikes = counters[i, N_COUNTERS:]
        if sync:
            keys, times, n_out, synops, spikes = run_sync(
                net.meta, net.weights, net.leaks, c[a:b], y[a:b], x[a:b], t[a:b], t0, bin_us, num_bins,
                readout.spatial_counts, cnt_ofs, mem_ofs, state, counts[i], snaps[i], layer_spikes,
                net.num_frame, max_spikes,
            )
        else:
            keys, times, n_out, synops, _, spikes = run_async(
                net.meta, net.weights, net.leaks, c[a:b], y[a:b], x[a:b], t[a:b], bfs, hop, t0, bin_us,
                num_bins, readout.spatial_counts, cnt_ofs, mem_ofs, state, first_ticks.copy(), counts[i],
                snaps[i], 0, int(tick_until[i]), True, layer_spikes, max_spikes,
            )
        if spikes > max_spikes:
            raise runaway(max_spikes, f"sample {i}")
        with output_lock:  # max_spikes bounds one sample; this bounds the whole batch's output events
            output_bytes[0] += n_out * CHIP_EVENT_DTYPE.itemsize
            if output_bytes[0] > MAX_RESULT_BYTES:
                raise ResourceExhausted(
                    f"the output events of the first samples of {n} already take more than "
                    f"{MAX_RESULT_BYTES / 2**30:.0f} GiB; send fewer samples per call"
                )
        counters[i, SYNOPS] = synops
        counters[i, OUTPUT_EVENTS] = n_out
        outputs[i] = chip_events(net, keys[:n_out], times[:n_out])

    if workers == 1 or n < 2:
        for i in range(n):
            one(i)
    else:
        with ThreadPoolExecutor(max_workers=min(workers, n)) as pool:
            list(pool.map(one, range(n)))

    output_offsets = np.zeros(n + 1, np.int64)
    output_offsets[1:] = np.cumsum([len(o) for o in outputs])
    return RunResult(
        output_events=concatenate_events(outputs) if n else np.zeros(0, CHIP_EVENT_DTYPE),
        output_offsets=output_offsets,
        counts=unpack_counts(counts, cnt_ofs, cnt_shapes),
        membranes=unpack_snapshots(net, snaps, mem_ofs, readout),
        counters=counters,
        compute_seconds=time.perf_counter() - started,
    )


def unpack_counts(counts: np.ndarray, cnt_ofs: np.ndarray, shapes: dict[int, tuple[int, ...]]) -> dict:
    """[n, flat] -> {layer: int32 [n, *shape]}."""
    out = {}
    for layer, shape in shapes.items():
        size = int(np.prod(shape))
        ofs = int(cnt_ofs[layer])
        out[layer] = counts[:, ofs : ofs + size].reshape((counts.shape[0], *shape)).copy()
    return out


def unpack_snapshots(net: SimNetwork, snaps: np.ndarray, mem_ofs: np.ndarray, readout: Readout) -> dict:
    """[n, flat [T, H, W, f] per layer] -> {layer: int16 [n, T, f, H, W]}."""
    out = {}
    n = snaps.shape[0]
    for layer in readout.membrane_layers:
        f, h, w = net.out_shape(layer)
        size = readout.num_bins * f * h * w
        ofs = int(mem_ofs[layer])
        states = snaps[:, ofs : ofs + size].reshape(n, readout.num_bins, h, w, f)
        out[layer] = np.ascontiguousarray(states.transpose(0, 1, 4, 2, 3))
    return out
