"""Seconds per training iteration: cil-bptt (chip in the loop) vs bptt, batch 64, same data, one run.

Target: cil-bptt at most 1.5x bptt with the local simulator daemon. The chip
call is started before the synchronous forward pass and waited for after it,
so the two overlap; threads are given deliberately: the daemon gets
``--workers`` (default 1) and torch ``--threads`` (default 1).

    python benchmarks/training.py [--iterations 8] [--batch-size 64] [--bins 5] [--chip ADDRESS] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from chiploop.data import NMNIST, default_data_dir, iterate_batches, make_batch, readout_for  # noqa: E402
from chiploop.training.chip import open_chip  # noqa: E402
from chiploop.training.config import TrainConfig  # noqa: E402
from chiploop.training.device import resolve_device  # noqa: E402
from chiploop.training.methods import make_method  # noqa: E402


def build(name: str, args, ds, chip):
    torch.manual_seed(0)
    cfg = TrainConfig(method=name, batch_size=args.batch_size, bins=args.bins, width=args.width, device=args.device,
                      progress=False)  # fmt: skip
    readout = readout_for(cfg.bins, cfg.duration_us)
    method = make_method(cfg, readout)
    calib = method.tensor(make_batch(ds, np.arange(128), readout).frames)
    method.setup(calib)
    method.start_epoch(0, calib, chip)
    return method


def measure(args, ds, chip) -> dict:
    """Both methods on the same batches, iterations interleaved (A B A B ...) so that both
    see the same machine load; the first iteration of each is a warm-up."""
    readout = readout_for(args.bins, TrainConfig().duration_us)
    batches = list(iterate_batches(ds, np.arange(len(ds)), readout, args.batch_size, shuffle=True, seed=1, drop_last=True))
    methods = {name: build(name, args, ds, chip) for name in ("bptt", "cil-bptt")}
    for m in methods.values():
        m.step(batches[0], chip)  # warm-up: first deploy, numba and torch first calls
    times: dict[str, list[float]] = {name: [] for name in methods}
    waits: list[float] = []
    for b in batches[1 : 1 + args.iterations]:
        for name, m in methods.items():
            t = time.perf_counter()
            step = m.step(b, chip)
            times[name].append(time.perf_counter() - t)
            if m.chip_in_loop:
                waits.append(step.chip_wait_s)
    cil = methods["cil-bptt"]
    chip_alone = []
    for b in batches[1 : 1 + min(3, args.iterations)]:
        t = time.perf_counter()
        chip.run(b.events, cil.chip_readout)
        chip_alone.append(time.perf_counter() - t)
    return {
        "bptt": statistics.median(times["bptt"]),
        "cil": statistics.median(times["cil-bptt"]),
        "bptt_mean": statistics.mean(times["bptt"]),
        "cil_mean": statistics.mean(times["cil-bptt"]),
        "wait": statistics.median(waits),
        "chip_alone": statistics.median(chip_alone),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--bins", type=int, default=5)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--workers", type=int, default=1, help="local daemon workers")
    p.add_argument("--chip", action="append", default=[], help="daemon address(es); default: a local daemon")
    p.add_argument("--device", default="auto", help="where torch trains (auto: a CUDA GPU if there is one)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ds = NMNIST(default_data_dir()).preload()
    with open_chip(tuple(args.chip), args.workers) as chip:
        r = measure(args, ds, chip)
    print(f"batch {args.batch_size}, T={args.bins}, width {args.width:g}, torch on {resolve_device(args.device)} "
          f"with {args.threads} thread(s), "
          f"daemon workers {args.workers}, median of {args.iterations} interleaved iterations")
    print(f"bptt      {r['bptt']:.3f} s/it (mean {r['bptt_mean']:.3f})")
    print(f"cil-bptt  {r['cil']:.3f} s/it (mean {r['cil_mean']:.3f}); waiting for the chip after the "
          f"forward {r['wait']:.3f} s/it; the chip call alone {r['chip_alone']:.3f} s")
    print(f"ratio cil-bptt / bptt = {r['cil'] / r['bptt']:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
