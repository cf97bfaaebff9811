"""``chiploop demo``: the client API end to end against a daemon, on bundled N-MNIST samples.

Deploys a small untrained network, runs a few samples, updates the output layer's
weights, runs again (the outputs change with the weights), streams one sample in
chunks, and prints what came back. It shows the calls, not accuracy: the weights
are random.
"""

from __future__ import annotations

import time

import numpy as np

from chiploop.client import ChipClient
from chiploop.errors import check_int
from chiploop.run import Readout
from chiploop.spec import InputLayer, Layer, NetworkSpec


def demo_network(seed: int = 0) -> NetworkSpec:
    """Input pooled 2x (17x17) -> conv 2->8 3x3 stride 2 (8x8) -> fully connected 8x8x8 -> 10."""
    rng = np.random.default_rng(seed)
    return NetworkSpec(
        layers=(
            Layer(
                weights=rng.integers(-3, 8, size=(8, 2, 3, 3)).astype(np.int8),
                threshold_high=12,
                stride=(2, 2),
                destinations=(1,),
                name="conv",
            ),
            Layer(weights=rng.integers(-3, 5, size=(10, 8, 8, 8)).astype(np.int8), threshold_high=24, name="fc"),
        ),
        input=InputLayer(sensor_size=(34, 34), pool=(2, 2)),
    )


def _summary(label: str, counts: np.ndarray, labels: np.ndarray, seconds: float, compute: float) -> None:
    totals = counts.sum(axis=1)  # [n, 10] spikes per class over the bins
    print(f"{label}: {seconds * 1e3:.0f} ms ({compute * 1e3:.0f} ms computing on the daemon)")
    for i, (row, label_i) in enumerate(zip(totals, labels, strict=True)):
        print(f"  sample {i}: label {label_i}, output spikes per class {row.tolist()}, argmax {int(row.argmax())}")


def demo(address: str, samples: int = 8, data: str | None = None) -> int:
    from chiploop.data.nmnist import NMNIST, default_data_dir

    check_int(samples, "samples", 1, 1 << 20)
    dataset = NMNIST(data or default_data_dir())
    n = min(samples, len(dataset))
    events = [dataset[i][0] for i in range(n)]
    labels = np.array([dataset[i][1] for i in range(n)])
    readout = Readout(bin_us=100_000, num_bins=3, membrane_layers=(1,))
    with ChipClient(address) as chip:
        info = chip.info()
        print(f"daemon {address}: backend {info.backend}, chip {info.chip_model}, chiploop {info.server_version}")
        spec = demo_network()
        model = chip.deploy(spec)
        print(f"deployed model {model.model_id} on cores {model.cores} (cached: {model.cached})")

        start = time.perf_counter()
        first = chip.run(model.model_id, events, readout)
        _summary("run 1", first.counts[1], labels, time.perf_counter() - start, first.compute_seconds)

        new_fc = -np.asarray(spec.layers[1].weights)  # flip the output layer's weights
        new_id = chip.update_weights(model.model_id, {1: {"weights": new_fc, "threshold_high": 16}})
        print(f"updated the fc layer: new model {new_id}")
        start = time.perf_counter()
        second = chip.run(new_id, events, readout)
        _summary("run 2", second.counts[1], labels, time.perf_counter() - start, second.compute_seconds)
        changed = int((first.counts[1] != second.counts[1]).any(axis=(1, 2)).sum())
        print(f"outputs changed with the weights in {changed} of {n} samples")

        with chip.stream(model.model_id, Readout(bin_us=100_000, num_bins=3, membrane_layers=(1,))) as stream:
            for chunk in np.array_split(events[0], 3):
                out = stream.send(chunk)
                print(f"stream {stream.session_id[:8]}: {chunk.size} events in -> {out.size} chip events out")
            outputs = stream.read_outputs()
            membranes = stream.read_membranes()
        print(f"stream total: {outputs.output_events.size} chip events, counts {outputs.counts[1].sum(axis=0).tolist()}")
        print(f"fc membranes now: {membranes[1].ravel().tolist()}")
        same = np.array_equal(outputs.counts[1], first.counts[1][0])
        print(f"stream counts equal run 1's for sample 0: {same}")
    return 0
