"""``chiploop eval``: a checkpoint's accuracy in software (float and integer SNN) and on the chip."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from chiploop.data.frames import readout_for
from chiploop.training.chip import open_chip
from chiploop.training.config import TrainConfig
from chiploop.training.evaluate import evaluate
from chiploop.training.methods import make_method
from chiploop.training.trainer import load_checkpoint, load_dataset, split_indices


def evaluate_checkpoint(
    path: str,
    chip: tuple[str, ...] = (),
    data: str | None = None,
    tonic: bool | None = None,
    split: str = "val",
    workers: int = 1,
    threads: int = 1,
    device: str = "auto",
) -> dict:
    """Rebuild the method from the checkpoint and measure it on the run's validation split
    (or a data set's test split), on the given chip or a local simulator daemon."""
    torch.set_num_threads(threads)
    ckpt = load_checkpoint(path)
    cfg = TrainConfig.from_dict(ckpt["config"])
    if data is not None:
        cfg = replace(cfg, data=data)
    if tonic is not None:
        cfg = replace(cfg, tonic=tonic)
    cfg = replace(cfg, device=device)  # where it was trained does not matter
    readout = readout_for(cfg.bins, cfg.duration_us)
    method = make_method(cfg, readout)
    method.load_state_dict(ckpt["method"])
    if split == "test":
        ds = load_dataset(cfg, split="test")
        indices = np.arange(len(ds))
    else:
        ds = load_dataset(cfg)
        indices = split_indices(cfg, np.asarray(ds.labels))[1]
    with open_chip(chip, workers) as pool:
        result = evaluate(method, ds, indices, pool)
    report = {
        "checkpoint": str(path),
        "method": cfg.method,
        "epoch": int(ckpt["epoch"]) + 1,
        "split": split,
        **result.as_dict(),
        "quantization_loss": 100.0 * (result.sync_float - result.sync_int),
        "sync_to_chip_loss": None if result.chip is None else 100.0 * (result.sync_int - result.chip),
    }
    lines = [
        f"{cfg.method} after {report['epoch']} epochs, {split} split ({result.n} samples)",
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
    return report
