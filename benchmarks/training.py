"""Seconds per training iteration: cil-bptt (chip in the loop) vs bptt, batch 64, same data, one run.

Target: cil-bptt at most 1.5x bptt with the local simulator daemon. cil-bptt's
default substitutes every hidden layer's spikes, so it waits for the chip before
its synchronous forward pass; "outputs only" (``--substitute-hidden none``)
starts the chip call before the forward pass and waits for it after, so the two
overlap. Threads are given deliberately: the daemon gets ``--workers``
(default 1) and torch ``--threads`` (default 1).

    python benchmarks/training.py [--iterations 14] [--batch-size 64] [--bins 5] [--chip ADDRESS] [--device cuda]
"""

from __future__ import annotations

import argparse
import contextlib
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
from workloads import positive_int  # noqa: E402

#: What is timed: (label, method, substitute_hidden); None is the method's default.
VARIANTS = (("bptt", "bptt", None), ("cil-bptt", "cil-bptt", None), ("cil-bptt, outputs only", "cil-bptt", ()))


def build(method_name: str, hidden: tuple[int, ...] | None, args, ds, chip):
    torch.manual_seed(0)
    cfg = TrainConfig(method=method_name, batch_size=args.batch_size, bins=args.bins, width=args.width,
                      device=args.device, substitute_hidden=hidden, progress=False)  # fmt: skip
    readout = readout_for(cfg.bins, cfg.duration_us)
    method = make_method(cfg, readout)
    calib = method.tensor(make_batch(ds, np.arange(128), readout).frames)
    method.setup(calib)
    method.start_epoch(0, calib, chip)
    return method


def measure(args, ds, chips: dict) -> dict:
    """Every variant on the same batches, iterations interleaved (A B C A B C ...) so that all
    see the same machine load; the first iteration of each is a warm-up."""
    readout = readout_for(args.bins, TrainConfig().duration_us)
    batches = list(iterate_batches(ds, np.arange(len(ds)), readout, args.batch_size, shuffle=True, seed=1, drop_last=True))
    if len(batches) < 2:
        raise SystemExit(f"batch {args.batch_size} leaves {len(batches)} full batch(es) of {len(ds)} samples: need 2 (a warm-up)")
    args.iterations = min(args.iterations, len(batches) - 1)  # what is measured, as printed
    methods = {label: build(name, hidden, args, ds, chips[label]) for label, name, hidden in VARIANTS}
    times: dict[str, list[float]] = {label: [] for label in methods}
    waits: dict[str, list[float]] = {label: [] for label in methods}
    for i, b in enumerate(batches[: 1 + args.iterations]):
        for label, m in methods.items():
            t = time.perf_counter()
            step = m.step(b, chips[label])
            if i > 0:  # batch 0 is the warm-up: first deploy, numba and torch first calls
                times[label].append(time.perf_counter() - t)
                waits[label].append(step.chip_wait_s)
    chip_alone = []
    for b in batches[1 : 1 + min(3, args.iterations)]:
        t = time.perf_counter()
        chips["cil-bptt"].run(b.events, methods["cil-bptt"].chip_readout)
        chip_alone.append(time.perf_counter() - t)
    return {
        label: {"median": statistics.median(times[label]), "mean": statistics.mean(times[label]),
                "wait": statistics.median(waits[label])}
        for label in methods
    } | {"chip_alone": statistics.median(chip_alone)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=positive_int, default=14)  # all 15 bundled batches of 64, less the warm-up
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--bins", type=positive_int, default=5)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads")
    p.add_argument("--workers", type=positive_int, default=1, help="local daemon workers")
    p.add_argument("--chip", action="append", default=[], help="daemon address(es); default: a local daemon")
    p.add_argument("--device", default="auto", help="where torch trains (auto: a CUDA GPU if there is one)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ds = NMNIST(default_data_dir()).preload()
    with contextlib.ExitStack() as stack:
        # One chip (connection, or local daemon) per variant: each cil-bptt keeps its own network deployed.
        chips = {label: stack.enter_context(open_chip(tuple(args.chip), args.workers)) for label, _, _ in VARIANTS}
        r = measure(args, ds, chips)
    print(f"batch {args.batch_size}, T={args.bins}, width {args.width:g}, torch on {resolve_device(args.device)} "
          f"with {args.threads} thread(s), "
          f"{'daemons ' + ', '.join(args.chip) if args.chip else f'local daemon workers {args.workers}'}, "
          f"median of {args.iterations} interleaved iterations")
    base = r["bptt"]["median"]
    for label, _, _ in VARIANTS:
        x = r[label]
        wait = "" if label == "bptt" else f"; waiting for the chip {x['wait']:.3f} s/it"
        print(f"{label:<24} {x['median']:.3f} s/it (mean {x['mean']:.3f}){wait}; {x['median'] / base:.2f}x bptt")
    print(f"the chip call alone {r['chip_alone']:.3f} s (every hidden layer monitored)")
    print(f"ratio cil-bptt / bptt = {r['cil-bptt']['median'] / base:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
