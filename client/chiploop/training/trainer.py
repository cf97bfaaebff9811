"""The training loop: data, epochs, progress, evaluation, checkpoints, metrics, plots.

Outputs in ``cfg.out``: checkpoint.pt (latest; ``resume`` continues from it),
config.json, metrics.csv, tb/ (TensorBoard), summary.json, accuracy.png,
weights.png.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from chiploop.data.augment import Augment
from chiploop.data.frames import readout_for
from chiploop.data.loader import EventDataset, iterate_batches, make_batch, num_batches
from chiploop.data.nmnist import NMNIST, default_data_dir
from chiploop.data.split import stratified_split
from chiploop.errors import InvalidArgument, ResourceExhausted
from chiploop.run import Readout
from chiploop.spec import InputLayer, NetworkSpec
from chiploop.training.chip import Chip, open_chip
from chiploop.training.config import TrainConfig, method_family
from chiploop.training.device import resolve_device
from chiploop.training.evaluate import EvalResult, evaluate
from chiploop.training.methods import Method, StepResult, make_method

CHECKPOINT = "checkpoint.pt"
LOCK_FILE = ".lock"
TENSORBOARD = "tb"
#: What a run writes besides its checkpoint: a folder holding them holds a run.
RUN_RECORDS = ("metrics.csv", "summary.json")
#: The log of the local daemon a run starts when it is given no chip address (kept for a post-mortem).
DAEMON_LOG = "daemon.log"
METRIC_FIELDS = (
    "epoch", "train_loss", "train_acc", "val_software", "val_sync_float", "val_sync_int", "val_chip",
    "val_agreement", "val_degradation", "chip_synops", "epoch_s", "chip_wait_s", "iterations",
)


@dataclass
class TrainResult:
    config: TrainConfig
    history: list[dict]
    final: EvalResult
    out: Path
    seconds: float  # the run's wall time over every session; measuring a finished run again adds none
    spec: NetworkSpec  # the chip network the final numbers were measured on


def load_dataset(cfg: TrainConfig, split: str = "train") -> EventDataset:
    if cfg.tonic:
        from chiploop.data.tonic_source import TonicNMNIST  # noqa: PLC0415 - optional route

        if cfg.data is None:
            raise InvalidArgument("data", "the tonic route needs --data (tonic's save_to folder)")
        return TonicNMNIST(cfg.data, split=split)
    return NMNIST(cfg.data, split=split)


def split_indices(cfg: TrainConfig, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The seeded stratified split (the config's fold of it), optionally cut to subsets (seeded too)."""
    train, val = stratified_split(labels, cfg.val_fraction, cfg.seed, cfg.fold)
    for name, part in (("training", train), ("validation", val)):
        if not len(part):
            raise InvalidArgument(
                "val_fraction",
                f"{cfg.val_fraction} of {len(labels)} samples leaves the {name} split empty; "
                "choose a fraction that leaves samples on both sides",
            )
    rng = np.random.default_rng(cfg.seed + 1)
    if cfg.max_train is not None and cfg.max_train < len(train):
        train = np.sort(train[rng.permutation(len(train))[: cfg.max_train]])
    if cfg.max_val is not None and cfg.max_val < len(val):
        val = np.sort(val[rng.permutation(len(val))[: cfg.max_val]])
    return train, val


def check_folder(path: str | Path) -> Path:
    """``--out`` as a folder that is there or can be made: refused if empty, or if it or a folder
    above it is a file."""
    if not str(path).strip():
        raise InvalidArgument("out", "must name a folder, got ''")
    out = Path(path)
    for above in (out, *out.parents):
        if above.exists():
            if not above.is_dir():
                raise InvalidArgument("out", f"{above} is a file, not a folder")
            break
    return out


def check_out(cfg: TrainConfig) -> None:
    """Refuse an ``out`` that cannot hold the run, or that holds a run already (unless resumed or
    overwritten: a second run there would replace its checkpoint and mix its curves with them)."""
    out = check_folder(cfg.out)
    ckpt = out / CHECKPOINT
    if ckpt.exists() and not ckpt.is_file():
        raise InvalidArgument("out", f"{ckpt} is not a file")
    if cfg.overwrite:
        return
    if ckpt.exists() and not cfg.resume:
        raise InvalidArgument(
            "out", f"{out} holds a run already ({CHECKPOINT}): --resume continues it, --overwrite replaces it"
        )
    traces = [name for name in RUN_RECORDS if (out / name).exists()]
    if traces and not ckpt.exists():  # its checkpoint deleted: a new run would mix its records with these
        raise InvalidArgument(
            "out", f"{out} holds a run's {', '.join(traces)} but no {CHECKPOINT} to resume it from: "
            "--overwrite replaces it, or use another --out",
        )  # fmt: skip


@contextlib.contextmanager
def training_into(out: Path) -> Iterator[None]:
    """Hold ``out`` for this run: a second run started into it meanwhile is refused (before its
    first checkpoint, nothing else would show that the folder is taken)."""
    with open(out / LOCK_FILE, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InvalidArgument("out", f"{out} is in use: another run is training into it now") from None
        yield  # closing the file releases the lock, also if this process dies


def make_folder(path: str | Path) -> Path:
    """``--out`` created (with its parents), or refused naming why."""
    out = check_folder(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidArgument("out", f"cannot create {out}: {exc.strerror or exc}") from None
    return out


def take_out(cfg: TrainConfig, cleanup: contextlib.ExitStack) -> Path:
    """The run's folder, created and held (``training_into``) until ``cleanup`` closes; only once
    it is held do an overwritten run's TensorBoard events go (another run may be writing them)."""
    out = make_folder(cfg.out)
    cleanup.enter_context(training_into(out))
    if not _resumes(cfg):  # an overwritten run's, or one that never wrote a checkpoint (check_out)
        shutil.rmtree(out / TENSORBOARD, ignore_errors=True)
    return out


def calibration_indices(cfg: TrainConfig, train: np.ndarray) -> np.ndarray:
    """A seeded random subset of the training samples, for weight init and ANN balancing. Not the
    first ones: the full data set lists its files digit by digit, so those are all zeros."""
    rng = np.random.default_rng(cfg.seed + 2)
    return np.sort(train[rng.permutation(len(train))[: cfg.calibration_samples]])


def calibration_frames(
    cfg: TrainConfig, ds: EventDataset, train: np.ndarray, readout: Readout, input_layer: InputLayer | None = None
) -> torch.Tensor:
    """Unaugmented frames of the calibration samples (``calibration_indices``), as ``input_layer``
    passes them to the network (a method's ``input_layer``)."""
    return torch.from_numpy(make_batch(ds, calibration_indices(cfg, train), readout, input_layer=input_layer).frames)


#: Fields a resumed run must share with its checkpoint: all that shapes what it trains. Epochs may
#: grow, and the chip and the data's folder may move (``data_fingerprint`` checks the samples). The
#: substitution is one: cil-bptt's default changed in 384ca97, and a run that switched it halfway
#: would be neither recipe.
RESUME_FIELDS = (
    "method", "seed", "bins", "duration_us", "batch_size", "val_fraction", "fold", "max_train", "max_val", "width",
    "neuron", "theta_low", "readout", "qat", "init_target", "augment", "scale_mode", "substitute_hidden",
    "lr", "lr_schedule", "surrogate_width", "shift", "drop", "balance_percentile", "balance_gain",
    "calibration_samples", "pretrain_epochs",
)


def data_fingerprint(labels: np.ndarray) -> str:
    """The samples a run splits, as far as the split can tell: their count and their labels in order."""
    digest = hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()[:16]
    return f"{len(labels)} samples, labels {digest}"


def check_trained_on(ckpt: dict, labels: np.ndarray, cfg: TrainConfig, path: str | Path, advice: str) -> None:
    """Refuse data other than the samples the checkpoint at ``path`` split (``advice``: what to do)."""
    data = data_fingerprint(labels)
    if ckpt.get("data", data) != data:  # checkpoints before the fingerprint have none
        raise InvalidArgument(
            "data", f"{cfg.data or default_data_dir()} holds {data}, but {path} was trained on {ckpt['data']}; {advice}"
        )


def _check_same(cfg: TrainConfig, saved: TrainConfig, path: Path, names: tuple[str, ...], advice: str = "") -> None:
    """Refuse, by name, the first of ``names`` in which ``cfg`` differs from the config ``path`` was trained with."""
    for name in names:
        if getattr(cfg, name) != getattr(saved, name):
            raise InvalidArgument(
                name, f"is {getattr(cfg, name)!r} but {path} was trained with {getattr(saved, name)!r}{advice}"
            )


def check_resumes_as_saved(cfg: TrainConfig, ckpt: dict, path: Path) -> None:
    """Refuse to resume the run in ``path`` with other settings (compared as its method uses them:
    runs before f5b5d73 recorded options their method ignores)."""
    saved = TrainConfig.from_dict(ckpt["config"]).for_its_method()
    _check_same(cfg, saved, path, RESUME_FIELDS, "; use another --out or the same settings to resume")


def check_resumable(cfg: TrainConfig) -> None:
    """``check_resumes_as_saved`` before anything trains, when ``cfg`` resumes a run."""
    if _resumes(cfg):
        path = Path(cfg.out) / CHECKPOINT
        try:
            ckpt = load_checkpoint(path)
        except InvalidArgument as exc:  # cut by a crash or a full disk, or not ours
            raise InvalidArgument(
                exc.field, f"{exc.reason}; it cannot be resumed: restore a copy, or --overwrite starts the run anew"
            ) from None
        check_resumes_as_saved(cfg, ckpt, path)


def _resumes(cfg: TrainConfig) -> bool:
    """Whether the run continues from the checkpoint in its ``out`` folder."""
    return cfg.resume and (Path(cfg.out) / CHECKPOINT).is_file()


#: Fields a run started from another checkpoint (``init_from``) must share with it: the model's shape.
MODEL_FIELDS = ("width", "neuron")


def _initial_model(cfg: TrainConfig) -> dict | None:
    """The model state ``cfg.init_from`` holds, checked against ``cfg`` (None: no init_from, or a resume)."""
    if cfg.init_from is None or _resumes(cfg):
        return None
    path = Path(cfg.init_from)
    ckpt = load_checkpoint(path)
    saved = TrainConfig.from_dict(ckpt["config"]).for_its_method()  # runs before f5b5d73 recorded ignored options
    family = method_family(cfg.method)
    if saved.method not in family:
        raise InvalidArgument(
            "init_from", f"{path} holds a {saved.method} model; {cfg.method} starts only from {' or '.join(family)}"
        )
    _check_same(cfg, saved, path, MODEL_FIELDS)
    return ckpt["method"]["model"]


@dataclass
class EpochProgress:
    """An epoch's training so far: what a checkpoint written inside it keeps."""

    epoch: int
    batches: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    chip_wait_s: float = 0.0
    elapsed_s: float = 0.0  # before this process took the epoch over

    def add(self, step: StepResult) -> None:
        self.batches += 1
        self.loss_sum += step.loss * step.n
        self.correct += step.correct
        self.seen += step.n
        self.chip_wait_s += step.chip_wait_s


class CheckpointNotWritten(ResourceExhausted):
    """A checkpoint could not be written (a full disk): the run stops, its last checkpoint stands."""


class RunStopped(Exception):
    """``train`` was asked to stop (``stop``) and did, after a checkpoint: ``--resume`` continues it."""

    def __init__(self, checkpoint: Path, where: str) -> None:
        super().__init__(f"stopped {where}; checkpoint {checkpoint}: run again with --resume to continue")
        self.checkpoint = checkpoint


def _save_checkpoint(
    path: Path, cfg: TrainConfig, data: str, epoch: int, method: Method, history: list[dict], elapsed_s: float,
    in_epoch: EpochProgress | None = None,
) -> None:
    """``data``: ``data_fingerprint``; ``epoch``: the last finished epoch (-1: none yet);
    ``elapsed_s``: the run's wall time so far, over every session; ``in_epoch``: how far the
    next epoch got."""
    tmp = path.with_suffix(".tmp")
    try:
        with open(tmp, "wb") as fh:
            _write_checkpoint(fh, cfg, data, epoch, method, history, elapsed_s, in_epoch)
            fh.flush()
            os.fsync(fh.fileno())  # on disk before it replaces the last one: a power cut keeps one whole
        os.replace(tmp, path)  # atomic: a crash mid-save leaves the previous checkpoint intact
    except (OSError, RuntimeError) as exc:  # torch says a full disk as RuntimeError ("unexpected pos")
        with contextlib.suppress(OSError):
            tmp.unlink()  # a partial file would keep a full disk full
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip().splitlines()[0]
        free = shutil.disk_usage(path.parent).free if path.parent.exists() else 0
        then = (
            "the last one written stands: make room, then the same command with --resume continues from it"
            if path.is_file()
            else "none was written yet: make room, then run the same command again"
        )
        raise CheckpointNotWritten(
            f"cannot write the checkpoint {path} ({why}; {free / 2**20:.0f} MiB free there); {then}"
        ) from None


def _write_checkpoint(
    fh, cfg: TrainConfig, data: str, epoch: int, method: Method, history: list[dict], elapsed_s: float,
    in_epoch: EpochProgress | None,
) -> None:
    torch.save(
        {
            "config": cfg.to_dict(),
            "data": data,
            "epoch": epoch,
            "method": method.state_dict(),
            "history": history,
            "torch_rng": torch.get_rng_state(),
            "in_epoch": None if in_epoch is None else asdict(in_epoch),
            "elapsed_s": elapsed_s,
            "format": 1,
        },
        fh,
    )


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint ``train`` wrote (on any device; loaded onto the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidArgument("checkpoint", f"no such file: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many kinds for a file that is not its own
        why = (str(exc).strip().splitlines() or [""])[0].split(". ")[0][:160]  # torch's own are paragraphs
        raise InvalidArgument("checkpoint", f"{path} is not a torch checkpoint ({type(exc).__name__}: {why})") from None
    missing = [k for k in ("config", "epoch", "method", "history") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise InvalidArgument("checkpoint", f"{path} is not a chiploop training checkpoint (no {', '.join(missing)})")
    return ckpt


def _write_metrics(path: Path, history: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=METRIC_FIELDS, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow(row)


def _tensorboard(out: Path, purge_step: int | None = None):
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 - optional at run time
    except ImportError:  # pragma: no cover - tensorboard is a dependency, but keep training without it
        return None
    try:
        return SummaryWriter(str(out / TENSORBOARD), purge_step=purge_step)
    except OSError as exc:  # a full disk: the curves are not worth the run (metrics.csv has them too)
        print(f"chiploop train: no TensorBoard curves ({exc.strerror or exc})", file=sys.stderr)
        return None


def train(cfg: TrainConfig, chip: Chip | None = None, stop: threading.Event | None = None) -> TrainResult:
    """Train ``cfg.method``; ``chip``: an open chip (else one is opened from ``cfg.chip``).

    Once ``stop`` is set (a signal handler, another thread) the run stops after the batch in
    progress, writes a checkpoint there and raises ``RunStopped``."""
    cfg.check().check_applies()
    check_out(cfg)
    check_resumable(cfg)  # a damaged checkpoint is refused before the data loads and a daemon starts
    resolve_device(cfg.device)  # before the chip: a device torch cannot use costs no daemon start
    initial_model = _initial_model(cfg)  # so does a bad checkpoint
    with contextlib.ExitStack() as stack:
        if chip is None and needs_chip(cfg) and cfg.chip:  # a mistyped address is refused before any folder
            chip = stack.enter_context(open_chip(cfg.chip, cfg.chip_workers))
        with backend_advice(BACKEND_ADVICE):
            return _train(cfg, chip, initial_model, stop, stack)


def needs_chip(cfg: TrainConfig) -> bool:
    return cfg.method.startswith("cil-") or cfg.chip_eval


#: What to train with when a backend refuses part of what the loop asks of it (the samna backends
#: do, see chiploop_server.devices.samna_backends), by the refused field.
BACKEND_ADVICE = {
    "monitor": "--substitute-hidden none trains cil-bptt on the chip's outputs alone, which every backend returns",
    "readout.membrane_layers": "--readout counts reads the output spikes alone and needs no membranes",
    "readout.mode": "training runs the chip's depth-first order: train against a 'sim' daemon or a Speck board",
}


def with_backend_advice(exc: InvalidArgument, advice_by_field: dict[str, str] = BACKEND_ADVICE) -> InvalidArgument:
    """``exc`` with what avoids it (by default the training flag), where a backend refused part of
    what the loop asks of it; ``exc`` itself otherwise."""
    advice = advice_by_field.get(exc.field)
    if advice is None:
        return exc
    return InvalidArgument(exc.field, f"{exc.reason}; {advice}")


@contextlib.contextmanager
def backend_advice(advice_by_field: dict[str, str]) -> Iterator[None]:
    """Re-raise a backend's refusal inside the block with its advice (``with_backend_advice``)."""
    try:
        yield
    except InvalidArgument as exc:
        advised = with_backend_advice(exc, advice_by_field)
        if advised is exc:
            raise
        raise advised from exc


def _train(
    cfg: TrainConfig, chip: Chip | None, initial_model: dict | None, stop: threading.Event | None,
    cleanup: contextlib.ExitStack,
) -> TrainResult:
    started = time.perf_counter()
    torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    ds = load_dataset(cfg)
    train_idx, val_idx = split_indices(cfg, np.asarray(ds.labels))
    out = take_out(cfg, cleanup)  # once the settings and the data have passed: a refusal leaves no folder
    if chip is None and needs_chip(cfg):
        # Started once the run holds its folder: a refused run starts no daemon, and the log kept
        # there is this run's alone. Closed before the folder is let go (cleanup unwinds in order).
        chip = cleanup.enter_context(open_chip((), cfg.chip_workers, log_path=out / DAEMON_LOG))
    data = data_fingerprint(np.asarray(ds.labels))
    readout = readout_for(cfg.bins, cfg.duration_us)
    method = make_method(cfg, readout)
    calib = calibration_frames(cfg, ds, train_idx, readout, method.input_layer).to(method.device)
    history: list[dict] = []
    previous_s = 0.0  # the run's time in earlier sessions
    start_epoch = 0
    resumed_in: EpochProgress | None = None  # the epoch a checkpoint was written inside of
    ckpt_path = out / CHECKPOINT
    if _resumes(cfg):
        ckpt = load_checkpoint(ckpt_path)
        check_resumes_as_saved(cfg, ckpt, ckpt_path)
        check_trained_on(ckpt, np.asarray(ds.labels), cfg, ckpt_path, "point --data at the samples it trained on")
        method.load_state_dict(ckpt["method"])
        # The time limit and the reported time span every session of the run: a run the limit
        # stopped is finished, and resuming it (experiment --resume rebuilding its tables) measures
        # it again rather than training on.
        previous_s = float(ckpt.get("elapsed_s", 0.0))  # checkpoints before it: no record
        started -= previous_s
        history = list(ckpt["history"])
        start_epoch = int(ckpt["epoch"]) + 1
        torch.set_rng_state(ckpt["torch_rng"])
        if ckpt.get("in_epoch"):
            resumed_in = EpochProgress(**ckpt["in_epoch"])
    elif initial_model is not None:
        method.model.load_state_dict(initial_model)  # trained weights, thresholds, scales; a fresh optimiser
    else:
        method.setup(calib)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    augment = Augment(cfg.shift, cfg.drop) if cfg.augment else None
    # A resumed session's iterations start after the checkpoint's: points an earlier session wrote
    # past it (before it was killed) are hidden, so no step shows twice.
    total = num_batches(len(train_idx), cfg.batch_size)  # an epoch's
    iterations_before = start_epoch * total if resumed_in is None else resumed_in.epoch * total + resumed_in.batches
    writer = _tensorboard(out, purge_step=iterations_before + 1 if _resumes(cfg) else None)
    final: EvalResult | None = None

    def save_inside_epoch(progress: EpochProgress, epoch: int, t_epoch: float) -> float:
        """A checkpoint of the epoch's training so far (``t_epoch``: when this process took up its
        time keeping); returns now, the time keeping's new start."""
        now = time.perf_counter()
        progress.elapsed_s += now - t_epoch
        _save_checkpoint(ckpt_path, cfg, data, epoch - 1, method, history, now - started, in_epoch=progress)
        return now

    try:
        for epoch in range(start_epoch, cfg.epochs):
            t_epoch = time.perf_counter()
            finishing = resumed_in is not None and resumed_in.epoch == epoch
            if history and not finishing and _past(cfg.time_limit_s, started):
                break  # after the epoch that passed the limit (perhaps in an earlier session)
            progress = resumed_in if finishing else EpochProgress(epoch)
            progress_at_start = progress.batches
            method.set_learning_rate(epoch)
            method.start_epoch(epoch, calib, chip, resumed=progress.batches > 0)
            batches = iterate_batches(
                ds, train_idx, readout, cfg.batch_size, shuffle=True, seed=cfg.seed * 1000 + epoch, augment=augment,
                skip=progress.batches, input_layer=method.input_layer,
            )
            bar = tqdm(
                batches,
                total=total,
                initial=progress.batches,
                desc=f"{cfg.method} {epoch + 1}/{cfg.epochs}",
                disable=not cfg.progress,
                leave=False,
                # Off a terminal (nohup, a container's log) every redraw lands in the log: a full-size
                # epoch is ~900 batches, so there the bar redraws once a minute.
                mininterval=0.1 if sys.stderr.isatty() else 60.0,
            )
            saved = time.perf_counter()
            in_step = False
            try:
                for batch in bar:
                    in_step = True
                    step = method.step(batch, chip)
                    in_step = False
                    progress.add(step)
                    bar.set_postfix(loss=f"{progress.loss_sum / progress.seen:.3f}", acc=f"{progress.correct / progress.seen:.3f}",
                                   refresh=False)
                    if writer is not None:  # per iteration too: an epoch of the full data set is ~900 of them
                        iteration = epoch * total + progress.batches
                        writer.add_scalar("iteration/train_loss", step.loss, iteration)
                        writer.add_scalar("iteration/train_acc", step.correct / max(step.n, 1), iteration)
                        writer.add_scalar("iteration/chip_wait_s", step.chip_wait_s, iteration)
                    stopping = stop is not None and stop.is_set()
                    if stopping or (progress.batches < total and time.perf_counter() - saved >= cfg.checkpoint_every_s):
                        t_epoch = saved = save_inside_epoch(progress, epoch, t_epoch)
                        if stopping:
                            bar.close()
                            raise RunStopped(ckpt_path, f"after batch {progress.batches} of {total} in epoch {epoch + 1}")
                method.prepare_export(calib)
                final = evaluate(method, ds, val_idx, chip if cfg.chip_eval else None, batch_size=100)
            except (RunStopped, CheckpointNotWritten):  # the latter: saving again would fail the same way
                raise
            except Exception:
                # A failure between steps (a sample that cannot be decoded, the chip gone while
                # validating) keeps the epoch's training so far: --resume continues from there.
                # One inside a step may have moved the weights past what ``progress`` counts.
                if not in_step and progress.batches > progress_at_start:
                    save_inside_epoch(progress, epoch, t_epoch)
                raise
            row = {
                "epoch": epoch,
                "train_loss": progress.loss_sum / max(progress.seen, 1),
                "train_acc": progress.correct / max(progress.seen, 1),
                "val_software": final.software,
                "val_sync_float": final.sync_float,
                "val_sync_int": final.sync_int,
                "val_chip": final.chip,
                "val_agreement": final.agreement,
                "val_degradation": final.degradation,
                "chip_synops": final.chip_synops,
                "epoch_s": progress.elapsed_s + time.perf_counter() - t_epoch,
                "chip_wait_s": progress.chip_wait_s,
                "iterations": progress.batches,
            }
            history.append(row)
            # The checkpoint first: records without one would make the folder unresumable (check_out),
            # and a resume writes metrics.csv again from the checkpoint's history.
            _save_checkpoint(ckpt_path, cfg, data, epoch, method, history, time.perf_counter() - started)
            _write_metrics(out / "metrics.csv", history)
            if writer is not None:
                for key, value in row.items():
                    if key != "epoch" and value is not None:
                        writer.add_scalar(key, value, epoch)
                writer.flush()
            if cfg.progress:
                chip_txt = "" if final.chip is None else f", chip {100 * final.chip:.1f}%"
                tqdm.write(
                    f"{cfg.method} epoch {epoch + 1}: loss {row['train_loss']:.3f}, "
                    f"val software {100 * final.software:.1f}%{chip_txt} ({row['epoch_s']:.0f} s)"
                )
            if stop is not None and stop.is_set() and epoch + 1 < cfg.epochs:
                raise RunStopped(ckpt_path, f"after epoch {epoch + 1}")
    finally:
        if writer is not None:
            writer.close()
    seconds = time.perf_counter() - started
    if final is None:  # nothing left to train (a finished run resumed): evaluate what is there
        _write_metrics(out / "metrics.csv", history)  # from the checkpoint: the file may be cut or gone
        method.prepare_export(calib)
        final = evaluate(method, ds, val_idx, chip if cfg.chip_eval else None, batch_size=100)
        seconds = previous_s  # the run's time: measuring it again is not training it
    spec = method.spec()
    _finish(out, cfg, spec, history, final)
    return TrainResult(cfg, history, final, out, seconds, spec)


def _past(time_limit_s: float | None, started: float) -> bool:
    return time_limit_s is not None and time.perf_counter() - started > time_limit_s


def _finish(out: Path, cfg: TrainConfig, spec: NetworkSpec, history: list[dict], final: EvalResult) -> None:
    from chiploop.training.plots import accuracy_curves, weight_distributions  # noqa: PLC0415 - matplotlib is slow to import

    summary = {"method": cfg.method, "epochs_run": len(history), "final": final.as_dict()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if history:
        accuracy_curves(history, out / "accuracy.png", title=cfg.method)
    weight_distributions(spec, out / "weights.png", title=f"{cfg.method}: int8 weights on the chip")
