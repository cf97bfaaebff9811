"""``chiploop eval``: a checkpoint's accuracy in software (float and integer SNN) and on the chip,
and, given several checkpoints, their chip accuracies compared sample by sample."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from chiploop.data.frames import readout_for
from chiploop.data.loader import EventDataset
from chiploop.data.nmnist import NMNIST, default_data_dir, split_folder
from chiploop.errors import InvalidArgument, check_int
from chiploop.training.chip import Chip, open_chip
from chiploop.training.config import TrainConfig
from chiploop.training.evaluate import EvalResult, evaluate, paired_margin
from chiploop.training.methods import Method, make_method
from chiploop.training.trainer import (
    backend_advice,
    calibration_frames,
    check_trained_on,
    load_checkpoint,
    load_dataset,
    split_indices,
)

#: What to do when a backend refuses to run a trained checkpoint, by the refused field: unlike in
#: training, the readout is fixed by how the checkpoint was trained.
EVAL_ADVICE = {
    "readout.membrane_layers": "this checkpoint's readout (trained with --readout charge) reads the output "
    "layer's membranes: measure it on a 'sim' daemon, or train with --readout counts to run it on a board",
    "readout.mode": "checkpoints are measured in the chip's depth-first order: use a 'sim' daemon or a Speck board",
}


def evaluate_checkpoint(
    *paths: str,
    chip: tuple[str, ...] = (),
    data: str | None = None,
    tonic: bool | None = None,
    split: str = "val",
    workers: int = 1,
    threads: int = 1,
    device: str = "auto",
) -> dict:
    """Rebuild each checkpoint's method and measure it on its run's validation split (or a data
    set's test split), on the given chip or a local simulator daemon: one path gives its report.

    Several give ``{"checkpoints": [reports], "paired": [...], "text": ...}``: every checkpoint on
    the same chip and samples, then each later one's chip accuracy against the first's, paired
    per sample (``paired_margin``: margin, standard error, and the samples only one of them got
    right). Checkpoints validated on different samples (another seed or fold) are refused:
    compare those on one test split."""
    if not paths:
        raise InvalidArgument("checkpoints", "give at least one checkpoint")
    torch.set_num_threads(check_int(threads, "threads", 1, 1 << 16))
    prepared = [_prepare(path, data, tonic, split, device) for path in paths]
    first_files = prepared[0].files
    for other in prepared[1:]:  # before measuring anything: refuse at once what cannot be compared
        if other.files != first_files:
            raise InvalidArgument(
                "checkpoints", f"{other.path} and {prepared[0].path} are not measured on the same samples "
                f"(another seed, fold or data set); compare them on one test split: --split test"
            )
    with open_chip(chip, workers) as pool:
        with backend_advice(EVAL_ADVICE):
            measured = [_evaluate(p, pool, split) for p in prepared]
    if len(measured) == 1:
        return measured[0][0]
    reports = [report for report, _ in measured]
    first_report, first = measured[0]
    pairs, lines = [], [r["text"] for r in reports]
    for report, result in measured[1:]:
        pair = paired_margin([result], [first])
        if pair is None:
            continue
        pair = {"checkpoint": report["checkpoint"], "against": first_report["checkpoint"], **pair}
        pairs.append(pair)
        lines.append(
            f"{report['method']} ({report['checkpoint']}) minus {first_report['method']} "
            f"({first_report['checkpoint']}) on the chip: {pair['margin']:+.2f} ± {pair['standard_error']:.2f} "
            f"points (paired over {pair['samples']} samples; {pair['only_model_right']} right only with "
            f"{report['method']}, {pair['only_baseline_right']} only with {first_report['method']})"
        )
    return {"checkpoints": reports, "paired": pairs, "text": "\n".join(lines)}


@dataclass
class _Prepared:
    """A checkpoint's method rebuilt, and the samples it is to be measured on."""

    path: str
    cfg: TrainConfig
    epoch: int  # epochs finished
    batches: int  # of the next one (a checkpoint written inside an epoch)
    method: Method
    dataset: EventDataset
    indices: np.ndarray

    @property
    def files(self) -> list:
        """The samples' files: checkpoints are compared only on the same ones."""
        return [self.dataset.files[i] for i in self.indices]


def _prepare(path: str, data: str | None, tonic: bool | None, split: str, device: str) -> _Prepared:
    ckpt = load_checkpoint(path)
    trained = TrainConfig.from_dict(ckpt["config"])
    cfg = trained
    if data is not None:
        cfg = replace(cfg, data=data)
    elif trained.data is not None and not Path(trained.data).is_dir():
        raise InvalidArgument(
            "data", f"{trained.data}, where {path} was trained, is not a folder from here: point --data at those samples"
        )
    if tonic is not None:
        cfg = replace(cfg, tonic=tonic)
    cfg = replace(cfg, device=device)  # where it was trained does not matter
    readout = readout_for(cfg.bins, cfg.duration_us)
    method = make_method(cfg, readout)
    method.load_state_dict(ckpt["method"])
    if split == "test":
        ds = load_dataset(cfg, split="test")
        _refuse_training_folder(ds, trained, path)
        indices = np.arange(len(ds))
    else:
        ds = load_dataset(cfg)
        # The validation split is held out only among the samples the run split.
        check_trained_on(
            ckpt, np.asarray(ds.labels), cfg, path,
            "its validation split is held out only among those: point --data at them, or measure other data "
            "with --split test",
        )  # fmt: skip
        indices = split_indices(cfg, np.asarray(ds.labels))[1]
    in_epoch = ckpt.get("in_epoch") or {}
    if in_epoch:
        # Written inside an epoch: export as the trainer does at the epoch's end (ANN routes
        # convert, float training requantizes), from the calibration samples it used.
        train_ds = ds if split != "test" else load_dataset(cfg)
        train_idx = split_indices(cfg, np.asarray(train_ds.labels))[0]
        method.prepare_export(calibration_frames(cfg, train_ds, train_idx, readout, method.input_layer).to(method.device))
    return _Prepared(str(path), cfg, int(ckpt["epoch"]) + 1, int(in_epoch.get("batches", 0)), method, ds, indices)


def _refuse_training_folder(test: EventDataset, trained: TrainConfig, path: str) -> None:
    """A folder of samples alone (labels.csv at its root) is every split of itself: trained on one,
    ``--split test`` without ``--data`` would measure the training samples."""
    if not isinstance(test, NMNIST) or trained.tonic:
        return
    try:
        train_folder = split_folder(Path(trained.data) if trained.data else default_data_dir(), "train")
    except InvalidArgument:
        return  # the training data is not here any more: nothing to confuse it with
    if test.folder.resolve() == train_folder.resolve():
        raise InvalidArgument(
            "split", f"the test split resolves to {test.folder}, the samples {path} was trained on; "
            "pass --data with held-out samples"
        )


def _evaluate(prepared: _Prepared, pool: Chip, split: str) -> tuple[dict, EvalResult]:
    cfg, method, ds, indices, path = prepared.cfg, prepared.method, prepared.dataset, prepared.indices, prepared.path
    result = evaluate(method, ds, indices, pool)
    report = {
        "checkpoint": str(path),
        "method": cfg.method,
        "epoch": prepared.epoch,
        "batches_into_next_epoch": prepared.batches,
        "split": split,
        **result.as_dict(),
        "quantization_loss": 100.0 * (result.sync_float - result.sync_int),
        "sync_to_chip_loss": None if result.chip is None else 100.0 * (result.sync_int - result.chip),
    }
    trained_more = f" and {prepared.batches} batches of the next" if prepared.batches else ""
    lines = [
        f"{cfg.method} after {report['epoch']} epochs{trained_more}, {split} split ({result.n} samples)",
        f"  software ({'ANN' if cfg.method in ('cnn', 'cnn-qat', 'cil-ann') else 'sync int SNN'}): {100 * result.software:6.2f} %",
        f"  sync SNN, float:          {100 * result.sync_float:6.2f} %",
        f"  sync SNN, int (exported): {100 * result.sync_int:6.2f} %",
    ]
    if result.chip is not None:
        lines += [
            f"  chip:                     {100 * result.chip:6.2f} %",
            f"  degradation software -> chip: {result.degradation:+.2f} points "
            f"(sync int -> chip {report['sync_to_chip_loss']:+.2f}); chip and sync int agree on "
            f"{100 * (result.agreement or 0):.1f} % of samples",
        ]
    report["text"] = "\n".join(lines)
    return report, result
