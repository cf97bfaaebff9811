"""Seconds per training iteration: cil-bptt (chip in the loop) vs bptt, batch 64, same data, one run.

Target: cil-bptt at most 1.5x bptt with the local simulator daemon. The chip
call is started before the synchronous forward pass and waited for after it,
so the two overlap; threads are given deliberately: the daemon gets
``--workers`` (default 1) and torch ``--threads`` (default 1).

    python benchmarks/training.py [--iterations 8] [--batch-size 64] [--bins 5] [--chip ADDRESS]
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
from chiploop.training.methods import make_method  # noqa: E402


def time_method(name: str, args, ds, chip) -> dict:
    torch.manual_seed(0)
    cfg = TrainConfig(method=name, batch_size=args.batch_size, bins=args.bins, width=args.width, progress=False)
    readout = readout_for(cfg.bins, cfg.duration_us)
    method = make_method(cfg, readout)
    calib = torch.from_numpy(make_batch(ds, np.arange(128), readout).frames)
    method.setup(calib)
    method.start_epoch(0, calib, chip)
    batches = list(iterate_batches(ds, np.arange(len(ds)), readout, args.batch_size, shuffle=True, seed=1, drop_last=True))
    method.step(batches[0], chip)  # warm-up: first deploy, numba and torch first calls
    times, waits = [], []
    for b in batches[1 : 1 + args.iterations]:
        t = time.perf_counter()
        step = method.step(b, chip)
        times.append(time.perf_counter() - t)
        waits.append(step.chip_wait_s)
    chip_alone = []
    if method.chip_in_loop:
        for b in batches[1 : 1 + min(3, args.iterations)]:
            t = time.perf_counter()
            chip.run(b.events, method.chip_readout)
            chip_alone.append(time.perf_counter() - t)
    return {
        "s_per_it": statistics.median(times),
        "mean": statistics.mean(times),
        "chip_wait": statistics.median(waits),
        "chip_alone": statistics.median(chip_alone) if chip_alone else None,
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
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ds = NMNIST(default_data_dir()).preload()
    with open_chip(tuple(args.chip), args.workers) as chip:
        bptt = time_method("bptt", args, ds, chip)
        cil = time_method("cil-bptt", args, ds, chip)
    ratio = cil["s_per_it"] / bptt["s_per_it"]
    print(f"batch {args.batch_size}, T={args.bins}, width {args.width:g}, torch threads {args.threads}, "
          f"daemon workers {args.workers}, median of {args.iterations} iterations")
    print(f"bptt      {bptt['s_per_it']:.3f} s/it (mean {bptt['mean']:.3f})")
    print(f"cil-bptt  {cil['s_per_it']:.3f} s/it (mean {cil['mean']:.3f}); waiting for the chip after the "
          f"forward {cil['chip_wait']:.3f} s/it; the chip call alone {cil['chip_alone']:.3f} s")
    print(f"ratio cil-bptt / bptt = {ratio:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
