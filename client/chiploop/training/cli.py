"""``chiploop train``, ``chiploop eval`` and ``chiploop experiment``.

The main ``chiploop`` CLI calls ``register(subparsers)``; ``python -m
chiploop.training.cli`` runs these three commands alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

from chiploop.architectures import NEURON_KINDS, READOUT_KINDS
from chiploop.errors import BackendUnavailable, DeadlineExceeded, InvalidArgument, NotFound, ResourceExhausted
from chiploop.training.config import METHOD_NAMES, TrainConfig

_DEFAULTS = TrainConfig()


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="N-MNIST folder (bundled or full layout); default: $CHIPLOOP_NMNIST_DIR or ../shared/data/nmnist-small")
    p.add_argument("--tonic", action="store_true", help="read --data through tonic.datasets.NMNIST (never downloads)")
    p.add_argument("--chip", action="append", default=[], metavar="ADDRESS",
                   help="daemon address (repeat to split each batch across daemons); 'inprocess': the simulator in this "
                        "process; without --chip: start a local daemon with the simulator")
    p.add_argument("--chip-workers", type=int, default=_DEFAULTS.chip_workers, help="workers of the local daemon")
    p.add_argument("--threads", type=int, default=_DEFAULTS.torch_threads, help="torch threads")
    p.add_argument("--device", default=_DEFAULTS.device,
                   help="where torch trains: auto (a CUDA GPU if torch sees one, else the CPU), cpu, cuda[:N]")
    p.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    p.add_argument("--bins", type=int, default=_DEFAULTS.bins, help="time bins T per sample")
    p.add_argument("--duration-ms", type=finite_float, default=_DEFAULTS.duration_us / 1000, help="span the T bins cover")
    p.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size)
    p.add_argument("--val-fraction", type=finite_float, default=_DEFAULTS.val_fraction)
    p.add_argument("--fold", type=int, default=_DEFAULTS.fold,
                   help="validate on this block of the seeded split, 0..1/val_fraction-1 (0: the plain split)")
    p.add_argument("--max-train", type=int, default=None, help="use a seeded subset of the training split")
    p.add_argument("--max-val", type=int, default=None, help="use a seeded subset of the validation split")
    p.add_argument("--lr", type=finite_float, default=_DEFAULTS.lr)
    p.add_argument("--width", type=finite_float, default=_DEFAULTS.width, help="hidden channel multiplier (1: the paper's net)")
    p.add_argument("--neuron", choices=NEURON_KINDS, default=_DEFAULTS.neuron)
    p.add_argument("--theta-low", type=float_or_none, default=_DEFAULTS.theta_low,
                   help="bptt, cil-bptt: hidden threshold_low, in thresholds; 'none': no clamp (the state's floor, -32768)")
    p.add_argument("--readout", choices=READOUT_KINDS, default=_DEFAULTS.readout,
                   help="bptt, cil-bptt: the score is total output spikes + last membrane / threshold (charge) "
                        "or total spikes alone (counts, sinabs' usual readout)")
    p.add_argument("--no-qat", action="store_true",
                   help="bptt: train in float and quantize after training (sinabs' usual route) instead of training "
                        "the integer network; cil-bptt's proxy is always the integer network")
    p.add_argument("--surrogate-width", type=finite_float, default=_DEFAULTS.surrogate_width,
                   help="width of the surrogate gradient around the threshold, in thresholds")
    p.add_argument("--init-target", type=float_or_none, default=_DEFAULTS.init_target,
                   help="bptt, cil-bptt: data init, the 99th-percentile input current per bin, in thresholds; "
                        "'none': torch's default init")
    p.add_argument("--lr-schedule", choices=("cosine", "constant"), default=_DEFAULTS.lr_schedule)
    p.add_argument("--scale-mode", choices=("max", "percentile"), default=_DEFAULTS.scale_mode,
                   help="per-layer weight scale: max|w|/127 or the 99.99th percentile of |w| / 127")
    p.add_argument("--augment", action="store_true", help="random shift and event drop, on the events")
    p.add_argument("--substitute-hidden", default=None,
                   help="cil-bptt: comma-separated hidden layers whose spikes also come from the chip; "
                        "default: all of them; 'none': the output layer's alone")
    p.add_argument("--pretrain-epochs", type=int, default=_DEFAULTS.pretrain_epochs,
                   help="cil-*: first epochs in software only, then the chip in the loop")
    p.add_argument("--no-chip-eval", action="store_true", help="skip the per-epoch validation on the chip")
    p.add_argument("--checkpoint-minutes", type=finite_float, default=_DEFAULTS.checkpoint_every_s / 60,
                   help="also checkpoint inside an epoch at most this often (0: after every batch); a run resumed "
                        "with --resume continues from the batch after it")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true", help="train into an --out that holds a run, replacing it")


def finite_float(text: str) -> float:
    """A float option's value: NaN and infinities are refused here, before anything runs."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def float_or_none(text: str) -> float | None:
    return None if text.strip().lower() == "none" else finite_float(text)


def _int_list(name: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InvalidArgument(name, f"must be comma-separated integers, got {text!r}") from None


def _hidden_layers(text: str | None) -> tuple[int, ...] | None:
    """--substitute-hidden: unset means the method's default (TrainConfig resolves it)."""
    if text is None:
        return None
    return () if text.strip().lower() == "none" else _int_list("substitute_hidden", text)


def _config(args: argparse.Namespace, **overrides) -> TrainConfig:
    hidden = _hidden_layers(args.substitute_hidden)
    cfg = TrainConfig(
        data=args.data,
        tonic=args.tonic,
        chip=tuple(args.chip),
        chip_workers=args.chip_workers,
        torch_threads=args.threads,
        device=args.device,
        seed=args.seed,
        bins=args.bins,
        duration_us=int(round(args.duration_ms * 1000)),
        batch_size=args.batch_size,
        val_fraction=args.val_fraction,
        fold=args.fold,
        max_train=args.max_train,
        max_val=args.max_val,
        lr=args.lr,
        width=args.width,
        neuron=args.neuron,
        theta_low=args.theta_low,
        readout=args.readout,
        qat=not args.no_qat,
        surrogate_width=args.surrogate_width,
        init_target=args.init_target,
        lr_schedule=args.lr_schedule,
        scale_mode=args.scale_mode,
        augment=args.augment,
        substitute_hidden=hidden,
        pretrain_epochs=args.pretrain_epochs,
        chip_eval=not args.no_chip_eval,
        overwrite=args.overwrite,
        progress=not args.quiet,
        checkpoint_every_s=60.0 * args.checkpoint_minutes,
    )
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg.check()


def _limit_threads(n: int) -> None:
    # Before torch/numba start their pools: the trainer and a local daemon share few cores.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(var, str(n))


def cmd_train(args: argparse.Namespace) -> int:
    _limit_threads(args.threads)
    from chiploop.training.trainer import CHECKPOINT, RunStopped, train  # noqa: PLC0415 - torch import only when used

    cfg = _config(args, method=args.method, epochs=args.epochs, out=args.out, resume=args.resume,
                  init_from=args.init_from)
    started = time.time()
    with stop_on_signals("train") as stop:
        try:
            result = train(cfg, stop=stop)
        except RunStopped as exc:
            print(f"chiploop train: {exc}", file=sys.stderr)
            return 128 + stop.signum  # how a shell reports a process the signal ended
        except CHIP_FAILURES:
            if checkpoints_written(cfg.out, started, CHECKPOINT):
                print(f"chiploop train: the run's last checkpoint is {os.path.join(cfg.out, CHECKPOINT)}; the same "
                      "command with --resume continues from it", file=sys.stderr)
            raise
    f = result.final
    print(json.dumps({"method": cfg.method, "out": str(result.out), "epochs": len(result.history), **f.as_dict()}, indent=2))
    return 0


#: The chip failed the run (a daemon gone for good, a queue that stayed full): the command says
#: where it can go on.
CHIP_FAILURES = (BackendUnavailable, DeadlineExceeded, NotFound, ResourceExhausted)


def checkpoints_written(out: str, since: float, name: str) -> bool:
    """Whether this command wrote a checkpoint under ``out`` (not one of a run it replaces)."""
    found = (os.path.join(folder, name) for folder, _, files in os.walk(out) if name in files)
    return any(os.path.getmtime(path) >= since for path in found)


class SignalStop(threading.Event):
    """Set by the first SIGTERM or SIGINT; ``signum`` says which."""

    signum = 0


@contextlib.contextmanager
def stop_on_signals(command: str) -> Iterator[SignalStop]:
    """The first SIGTERM or SIGINT asks the run to stop at the next batch, checkpointed (a
    scheduler's preemption, a Ctrl-C); a second SIGINT interrupts at once."""
    stop = SignalStop()

    def handle(signum: int, frame: object) -> None:  # noqa: ARG001 - the signal module's signature
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.signum = signum
        stop.set()
        print(f"chiploop {command}: {signal.Signals(signum).name}: stopping after the batch in progress "
              f"(checkpointed){'; Ctrl-C again to stop now' if signum == signal.SIGINT else ''}", file=sys.stderr)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_eval(args: argparse.Namespace) -> int:
    _limit_threads(args.threads)
    from chiploop.training.evaluate_checkpoint import evaluate_checkpoint  # noqa: PLC0415

    report = evaluate_checkpoint(
        *args.checkpoint, chip=tuple(args.chip), data=args.data, tonic=args.tonic, split=args.split,
        workers=args.chip_workers, threads=args.threads, device=args.device,
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(report["text"])
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    _limit_threads(args.threads)
    from chiploop.training.experiment import run_cv, run_experiment, run_folds, run_seeds  # noqa: PLC0415
    from chiploop.training.trainer import CHECKPOINT, RunStopped  # noqa: PLC0415

    cfg = _config(args, out=args.out, resume=args.resume)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else list(METHOD_NAMES)
    if args.epochs is not None:
        cfg.extra["epochs"] = {m: args.epochs for m in METHOD_NAMES}
    seeds = list(_int_list("seeds", args.seeds)) if args.seeds else []
    folds = None if args.folds.strip() == "all" else list(_int_list("folds", args.folds))
    if args.folds and args.fold != _DEFAULTS.fold:
        raise InvalidArgument("fold", "--folds runs the folds it names; --fold picks the one of a single run")
    started = time.time()
    with stop_on_signals("experiment") as stop:
        try:
            if args.seeds and args.folds:
                run_cv(cfg, methods, seeds, folds, budget_min=args.budget, stop=stop)
                report = os.path.join(args.out, "cv.md")
            elif args.seeds:
                run_seeds(cfg, methods, seeds, budget_min=args.budget, stop=stop)
                report = os.path.join(args.out, "seeds.md")
            elif args.folds:
                run_folds(cfg, methods, folds, budget_min=args.budget, stop=stop)
                report = os.path.join(args.out, "folds.md")
            else:
                run_experiment(cfg, methods, budget_min=args.budget, stop=stop)
                report = os.path.join(args.out, "table1.md")
        except RunStopped as exc:
            print(f"chiploop experiment: {exc}", file=sys.stderr)
            return 128 + stop.signum
        except CHIP_FAILURES:
            if checkpoints_written(args.out, started, CHECKPOINT):
                print(f"chiploop experiment: the runs' checkpoints are under {args.out}; the same command with "
                      "--resume continues from them", file=sys.stderr)
            raise
    print(report)
    with open(report) as fh:
        print(fh.read())
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add train, eval and experiment to the main CLI's subparsers."""
    p = subparsers.add_parser("train", help="train a spiking CNN for the chip (CIL-SPL and baselines)")
    p.add_argument("--method", choices=METHOD_NAMES, default=_DEFAULTS.method)
    p.add_argument("--epochs", type=int, default=_DEFAULTS.epochs)
    p.add_argument("--out", default=_DEFAULTS.out, help="run folder: checkpoint, metrics.csv, tb/, plots")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="start from this checkpoint's trained model instead of a fresh init (the same model "
                        "family: bptt/cil-bptt, or cnn/cnn-qat/cil-ann), e.g. cil-bptt fine-tuning of a bptt model "
                        "trained without the chip; the optimiser and the schedule start afresh")
    _common(p)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("eval", help="accuracy of a checkpoint in software and on the chip")
    p.add_argument("checkpoint", nargs="+", help="one checkpoint; several: also each one's chip accuracy against "
                                                 "the first's, paired per sample, on the same samples")
    p.add_argument("--data", default=None, help="default: the data the checkpoint was trained on")
    p.add_argument("--tonic", action=argparse.BooleanOptionalAction, default=None,
                   help="read --data through tonic (or not); default: as the checkpoint was trained")
    p.add_argument("--chip", action="append", default=[], metavar="ADDRESS", help="as for train")
    p.add_argument("--chip-workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="auto", help="as for train (the checkpoint loads on any device)")
    p.add_argument("--split", choices=("val", "test"), default="val",
                   help="val: the run's validation split; test: the Test split of a full N-MNIST folder")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("experiment", help="every method on the same data: the paper's Table 1")
    p.add_argument("--out", default="runs/table1")
    p.add_argument("--budget", type=finite_float, default=25.0, help="minutes for all methods together (per seed)")
    p.add_argument("--seeds", default="", help="comma-separated seeds: the whole experiment once per seed, in "
                                               "OUT/seed<k>/, and seeds.md with means, spreads and CIL margins")
    p.add_argument("--folds", default="", help="'all' or comma-separated folds: k-fold cross-validation of --seed's split "
                                               "(1/val-fraction folds), each in OUT/fold<k>/, and folds.md with pooled "
                                               "accuracies and paired CIL margins; with --seeds: that for every seed, "
                                               "in OUT/seed<k>/fold<j>/, and cv.md pooling all of them")
    p.add_argument("--epochs", type=int, default=None, help="epochs of every method (default: the plan's)")
    p.add_argument("--methods", default="", help=f"comma-separated subset of {', '.join(METHOD_NAMES)}")
    p.add_argument("--resume", action="store_true", help="continue each method from its checkpoint")
    _common(p)
    p.set_defaults(func=cmd_experiment)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chiploop")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
