"""Workloads shared by the benchmarks: bundled N-MNIST samples and the paper's network
with random int8 weights whose thresholds are calibrated to a realistic firing rate.
"""

from __future__ import annotations

import argparse

import numpy as np
from chiploop.architectures import NMNIST_PAPER
from chiploop.data.frames import trim_events
from chiploop.data.nmnist import default_data_dir, read_nmnist_bin
from chiploop.errors import ResourceExhausted
from chiploop.run import Readout, pack_samples
from chiploop_server.sim import SimNetwork, run_batch


def positive_int(text: str) -> int:
    """An argparse type: the benchmarks' counts (samples, bins, repeats, threads) are >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


#: The samples the firing rate is calibrated on (the first ones of a batch).
CALIBRATION_SAMPLES = 4

#: The bins the firing rate is calibrated on (benchmarks/simulator.py's defaults).
CALIBRATION_READOUT = Readout(bin_us=10_000, num_bins=30)


def calibration_batch(samples: list[np.ndarray], readout: Readout = CALIBRATION_READOUT) -> tuple[np.ndarray, np.ndarray]:
    """The first CALIBRATION_SAMPLES samples cut to ``readout``'s window, packed: what a layer's
    firing rate is calibrated on, the same in every benchmark."""
    return pack_samples([trim_events(s, readout) for s in samples[:CALIBRATION_SAMPLES]])


def load_samples(n: int) -> list[np.ndarray]:
    folder = default_data_dir() / "train"
    files = sorted(folder.glob("*.bin"), key=lambda p: int(p.stem))[:n]
    if len(files) < n:
        raise SystemExit(f"need {n} samples in {folder}, found {len(files)} (set CHIPLOOP_NMNIST_DIR)")
    return [read_nmnist_bin(f) for f in files]


def random_weights(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.integers(-128, 128, (out[0], inp[0], s.kernel, s.kernel)).astype(np.int8)
        for (inp, out), s in zip(NMNIST_PAPER.layer_shapes(), NMNIST_PAPER.stages, strict=True)
    ]


def calibrate(weights, events, offsets, readout: Readout, rate: float) -> list[int]:
    """Per layer in order, the smallest threshold whose firing rate is at most ``rate`` per neuron per bin."""
    neurons = [int(np.prod(out)) for _, out in NMNIST_PAPER.layer_shapes()]
    thresholds = [32767] * len(weights)
    for layer in range(len(weights)):
        lo, hi = 1, 32767
        while lo < hi:
            thresholds[layer] = mid = (lo + hi) // 2
            net = SimNetwork.from_spec(NMNIST_PAPER.spec(weights, thresholds))
            try:
                result = run_batch(net, events, offsets, readout, max_spikes=2_000_000)
                got = result.counters[:, 4 + layer].mean() / (neurons[layer] * readout.num_bins)
            except ResourceExhausted:
                got = np.inf
            lo, hi = (mid + 1, hi) if got > rate else (lo, mid)
        thresholds[layer] = lo
    return thresholds
