"""Transport cost of the daemon against the simulator's compute, and raw throughput.

    python benchmarks/transport.py                  # starts a local daemon (sim, 1 worker)
    python benchmarks/transport.py --address HOST:PORT

1. A batch of 64 bundled N-MNIST samples through the paper's 6-layer network
   (random int8 weights; "realistic": thresholds calibrated so every layer fires
   about 3 % of its neurons per 10 ms bin: the network of benchmarks/simulator.py; and a sparse
   and a dense fixed setting, to bracket it):
   transport = client wall time of ``ChipClient.run`` (default settings: the
   batch goes in pipelined chunks) - the daemon's ``compute_seconds`` summed over
   the chunks (client encode, gRPC both ways, server decode and checks, queueing,
   server encode, client decode). Target: < 5 % of compute.
2. 4 MiB payloads, each way, with next to no compute: effective MB/s =
   payload / (wall - compute). Target: >= 300 MB/s.

Prints figures and ratios; asserts nothing (speed targets are not tests).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
from chiploop import wire
from chiploop.architectures import NMNIST_PAPER
from chiploop.client import ChipClient
from chiploop.data.nmnist import NMNIST, default_data_dir
from chiploop.events import DVS_EVENT_DTYPE
from chiploop.run import Readout, pack_samples
from chiploop.spec import InputLayer, Layer, NetworkSpec
from chiploop.v1 import chiploop_pb2 as pb
from workloads import CALIBRATION_READOUT, calibrate, calibration_batch, positive_int, random_weights

MiB = 1 << 20


def paper_network(low: int, high: int, threshold: int, seed: int = 0) -> NetworkSpec:
    rng = np.random.default_rng(seed)
    weights = [
        rng.integers(low, high, size=(out[0], inp[0], s.kernel, s.kernel)).astype(np.int8)
        for s, (inp, out) in zip(NMNIST_PAPER.stages, NMNIST_PAPER.layer_shapes(), strict=True)
    ]
    return NMNIST_PAPER.spec(weights, [threshold] * len(weights))


def timed_runs(chip: ChipClient, model_id: str, samples, readout: Readout, repeats: int) -> tuple[float, float, float]:
    """(wall, compute) seconds of the run with the median transport, and the best transport."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = chip.run(model_id, samples, readout)
        wall = time.perf_counter() - start
        runs.append((wall - result.compute_seconds, wall, result.compute_seconds))
    runs.sort()
    _, wall, compute = runs[len(runs) // 2]
    return wall, compute, runs[0][0]


def codec_costs(samples, readout: Readout, result, repeats: int = 5) -> tuple[float, float]:
    """Client-side encode of the request and decode of a response like ``result``: best of ``repeats``, in s."""
    events, offsets = pack_samples(samples)
    raw = wire.encode_run_result(result).SerializeToString()
    encodes, decodes = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        template = pb.RunRequest(model_id="x")
        wire.encode_readout(readout, template.readout)
        wire.encode_run_request(template, events, offsets)  # what ChipClient.run sends
        encodes.append(time.perf_counter() - start)
        start = time.perf_counter()
        wire.decode_run_result(pb.RunResponse.FromString(raw), writable=True)
        decodes.append(time.perf_counter() - start)
    return min(encodes), min(decodes)


def batch_benchmark(chip: ChipClient, samples, repeats: int) -> None:
    readout = Readout(bin_us=60_000, num_bins=5, membrane_layers=(5,))
    request_mb = sum(s.nbytes for s in samples) / 1e6
    print(f"batch: {len(samples)} N-MNIST samples, {sum(s.size for s in samples)} events ({request_mb:.2f} MB)")
    weights = random_weights()
    cal_events, cal_offsets = calibration_batch(samples)
    thresholds = calibrate(weights, cal_events, cal_offsets, CALIBRATION_READOUT, rate=0.03)
    realistic = NMNIST_PAPER.spec(weights, thresholds)
    networks = {
        "realistic": ("random int8, 3 % firing", realistic),
        "sparse": ("weights -8..7, thresholds 64", paper_network(-8, 8, 64)),
        "dense": ("weights -6..6, thresholds 40", paper_network(-6, 7, 40)),
    }
    for label, (what, spec) in networks.items():
        model = chip.deploy(spec).model_id
        result = chip.run(model, samples, readout)  # warm: first-call costs are not transport
        wall, compute, _ = timed_runs(chip, model, samples, readout, repeats)
        transport = wall - compute
        encode, decode = codec_costs(samples, readout, result)
        print(
            f"  {label:9s} net ({what}): "
            f"{int(result.counters[:, 2].sum()) / 1e6:.0f} M synops, {result.output_events.size} output events"
        )
        print(
            f"         wall {wall * 1e3:8.1f} ms  compute {compute * 1e3:8.1f} ms  transport {transport * 1e3:6.1f} ms"
            f"  = {100 * transport / compute:5.2f} % of compute (target < 5 %)"
        )
        print(f"         of which client encode {encode * 1e3:.1f} ms, client decode {decode * 1e3:.1f} ms")


def throughput_benchmark(chip: ChipClient, repeats: int) -> None:
    # A network that does (next to) nothing: 1x1 kernel, threshold never reached.
    idle = NetworkSpec(
        layers=(Layer(weights=np.zeros((1, 2, 1, 1), np.int8), threshold_high=32767),),
        input=InputLayer(sensor_size=(34, 34)),
    )
    wide = NetworkSpec(
        layers=(Layer(weights=np.zeros((2, 2, 1, 1), np.int8), threshold_high=32767),),
        input=InputLayer(sensor_size=(34, 34)),
    )
    n = (4 * MiB) // DVS_EVENT_DTYPE.itemsize
    rng = np.random.default_rng(0)
    events = np.zeros(n, DVS_EVENT_DTYPE)
    events["x"], events["y"], events["p"] = rng.integers(0, 34, n), rng.integers(0, 34, n), rng.integers(0, 2, n)
    events["t"] = np.arange(n)
    up_model = chip.deploy(idle).model_id
    chip.run(up_model, [events])
    wall, compute, best = timed_runs(chip, up_model, [events], Readout(), repeats)
    up = events.nbytes / (wall - compute) / 1e6
    print(f"4 MiB request ({n} events), empty response: wall {wall * 1e3:.1f} ms, compute {compute * 1e3:.1f} ms")
    print(
        f"  -> {up:.0f} MB/s effective upload, median of {repeats} (best {events.nbytes / best / 1e6:.0f} MB/s;"
        " target >= 300 MB/s)"
    )

    # A response of 4 MiB: membranes of a 2x34x34 layer in ~900 bins, from 1 event.
    bins = (4 * MiB) // (2 * 2 * 34 * 34)
    readout = Readout(bin_us=1, num_bins=bins, membrane_layers=(0,))
    down_model = chip.deploy(wide).model_id
    one = events[:1]
    result = chip.run(down_model, [one], readout)
    size = result.membranes[0].nbytes
    wall, compute, best = timed_runs(chip, down_model, [one], readout, repeats)
    down = size / (wall - compute) / 1e6
    print(f"1-event request, {size / MiB:.1f} MiB response: wall {wall * 1e3:.1f} ms, compute {compute * 1e3:.1f} ms")
    print(
        f"  -> {down:.0f} MB/s effective download, median of {repeats} (best {size / best / 1e6:.0f} MB/s;"
        " target >= 300 MB/s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--address", help="a running daemon (default: start a local one)")
    parser.add_argument("--samples", type=positive_int, default=64)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--data", default=None, help="N-MNIST folder (default: the bundled samples)")
    args = parser.parse_args()
    data = NMNIST(args.data or default_data_dir())
    if args.samples > len(data):
        parser.error(f"--samples {args.samples}: the data holds {len(data)}")
    samples = [data[i][0] for i in range(args.samples)]

    with contextlib.ExitStack() as stack:
        address = args.address
        if address is None:
            from chiploop_server.local import LocalDaemon

            address = stack.enter_context(LocalDaemon(backend="sim", workers=1)).address
            print(f"local daemon (sim, 1 worker) on {address}")
        chip = stack.enter_context(ChipClient(address, timeout=600))
        info = chip.info()
        print(f"daemon: backend {info.backend}, {info.workers} worker(s), chiploop {info.server_version}")
        batch_benchmark(chip, samples, args.repeats)
        throughput_benchmark(chip, max(args.repeats, 9))


if __name__ == "__main__":
    main()
