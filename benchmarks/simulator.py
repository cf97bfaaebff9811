"""Simulator speed on the paper's N-MNIST network over bundled N-MNIST samples; prints figures.

    python benchmarks/simulator.py [--samples 64] [--bins 30] [--bin-us 10000] [--rate 0.03]

Weights are random int8 (mixed sign, fixed seed); each layer's threshold is
searched (in order, on a few samples) so that the layer fires about ``rate``
spikes per neuron per bin: a plausible, realistic activity. Then, on the same
batch: the event-driven simulator (depth-first, breadth-first) on 1 and 2
workers, its synchronous counterpart, and a sinabs forward pass (torch Conv2d
+ IAFSqueeze(MultiSpike, subtract reset), the same integer weights, the same
bins as time steps, the whole batch at once) on 1 and 2 torch threads.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from chiploop.architectures import NMNIST_PAPER
from chiploop.data.frames import trim_events
from chiploop.run import Readout, pack_samples
from chiploop_server.sim import SimNetwork, run_batch
from workloads import calibrate, calibration_batch, load_samples, positive_int, random_weights


def sinabs_model(spec, batch: int):
    import sinabs.layers as sl
    import torch
    from sinabs.activation import MembraneSubtract, MultiSpike

    modules = []
    for layer in spec.layers:
        f, c, ky, kx = layer.weights.shape
        conv = torch.nn.Conv2d(c, f, (ky, kx), stride=layer.stride, padding=layer.padding, bias=False)
        conv.weight.data = torch.from_numpy(layer.weights.astype(np.float32))
        modules.append(conv)
        modules.append(
            sl.IAFSqueeze(
                batch_size=batch,
                spike_threshold=float(layer.threshold_high),
                spike_fn=MultiSpike,
                reset_fn=MembraneSubtract(),
                min_v_mem=float(layer.threshold_low),
            )
        )
        if layer.pool != (1, 1):
            modules.append(sl.SumPool2d(layer.pool))
    return torch.nn.Sequential(*modules)


def frames(events, offsets, readout: Readout) -> np.ndarray:
    """[n * T, 2, 34, 34] float32 event counts per bin (the training frameworks' input)."""
    n, T = offsets.size - 1, readout.num_bins
    out = np.zeros((n, T, 2, 34, 34), np.float32)
    sample = np.repeat(np.arange(n), np.diff(offsets))
    b = (events["t"] - readout.t0_us) // readout.bin_us
    keep = (b >= 0) & (b < T)
    np.add.at(out, (sample[keep], b[keep], events["p"][keep], events["y"][keep], events["x"][keep]), 1)
    return out.reshape(n * T, 2, 34, 34)


def time_sinabs(spec, x, batch: int, threads: int, repeats: int) -> tuple[float, np.ndarray]:
    import torch

    torch.set_num_threads(threads)
    model = sinabs_model(spec, batch)
    inp = torch.from_numpy(x)
    best = np.inf
    with torch.no_grad():
        for _ in range(repeats):
            for m in model:
                if hasattr(m, "reset_states"):
                    m.reset_states()
            started = time.perf_counter()
            out = model(inp)
            best = min(best, time.perf_counter() - started)
    torch.set_num_threads(1)
    return best, out.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=positive_int, default=64)
    parser.add_argument("--bins", type=positive_int, default=30)
    parser.add_argument("--bin-us", type=positive_int, default=10_000)
    parser.add_argument("--rate", type=float, default=0.03, help="target spikes per neuron per bin")
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--no-sinabs", action="store_true")
    args = parser.parse_args()
    if not 0 < args.rate < 1:
        parser.error(f"--rate must be in (0, 1), got {args.rate}")

    readout = Readout(bin_us=args.bin_us, num_bins=args.bins)
    # Every variant sees the same work: the event-driven modes would otherwise simulate what lies
    # past the window (N-MNIST samples last ~306 ms) while the time-stepped ones stop at it.
    samples = [trim_events(s, readout) for s in load_samples(args.samples)]
    events, offsets = pack_samples(samples)
    weights = random_weights()
    started = time.perf_counter()
    cal_events, cal_offsets = calibration_batch(samples, readout)
    thresholds = calibrate(weights, cal_events, cal_offsets, readout, args.rate)
    spec = NMNIST_PAPER.spec(weights, thresholds)
    net = SimNetwork.from_spec(spec)
    print(f"N-MNIST samples: {args.samples}, {events.size} events ({events.size / args.samples:.0f} per sample)")
    print(f"readout: {args.bins} bins of {args.bin_us} us (events past them cut); cores {net.cores}")
    print(f"thresholds (calibrated in {time.perf_counter() - started:.1f} s for {args.rate:.1%} per neuron per bin): {thresholds}")
    print(f"numba threads {os.environ.get('NUMBA_NUM_THREADS', 'default')}, cpus {os.cpu_count()}")

    run_batch(net, cal_events, cal_offsets, Readout(bin_us=args.bin_us, num_bins=args.bins, mode="sync"))  # compile
    neurons = np.array([np.prod(out) for _, out in NMNIST_PAPER.layer_shapes()])
    timings: dict[tuple[str, int], float] = {}
    print(f"\n{'mode':<14}{'workers':>8}{'s/batch':>10}{'ms/sample':>11}{'Mev/s':>9}{'Msynops/s':>11}")
    for mode in ("depth_first", "breadth_first", "sync"):
        r = Readout(bin_us=args.bin_us, num_bins=args.bins, mode=mode)
        for workers in (1, 2):
            best, result = np.inf, None
            for _ in range(args.repeats):
                result = run_batch(net, events, offsets, r, workers=workers)
                best = min(best, result.compute_seconds)
            timings[(mode, workers)] = best
            synops = result.counter("synops").sum()
            print(
                f"{mode:<14}{workers:>8}{best:>10.3f}{1000 * best / args.samples:>11.2f}"
                f"{events.size / best / 1e6:>9.2f}{synops / best / 1e6:>11.0f}"
            )
        spikes = result.counters[:, 4:].sum(axis=0)
        per_bin = spikes / (neurons * args.bins * args.samples)
        print(f"  firing, % of neurons per bin: {' '.join(f'{100 * p:.2f}' for p in per_bin)};"
              f" synops/sample {synops / args.samples / 1e6:.1f} M")
        if mode == "sync":
            sync_counts = result.counts[len(spec.layers) - 1]

    if args.no_sinabs:
        return
    x = frames(events, offsets, readout)
    print(f"\nsinabs forward, batch {args.samples} x {args.bins} steps (Conv2d + IAFSqueeze, float32):")
    for threads in (1, 2):
        seconds, out = time_sinabs(spec, x, args.samples, threads, args.repeats)
        sim = timings[("depth_first", threads)]
        print(f"  {threads} thread(s): {seconds:.3f} s; simulator depth-first on {threads} worker(s) {sim:.3f} s:"
              f" simulator / sinabs = {sim / seconds:.2f}; sync / sinabs = {timings[('sync', threads)] / seconds:.2f}")
    same = np.array_equal(out.reshape(args.samples, args.bins, -1).astype(np.int64), sync_counts)
    print(f"  sinabs output spike counts == simulator sync counts: {same}")


if __name__ == "__main__":
    main()
