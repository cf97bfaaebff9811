"""The chip-in-loop substitutions (CIL-SPL), as small pure functions.

``straight_through(sync, chip)`` returns a tensor whose value is the chip's and
whose gradient is the synchronous graph's: y = y_sync + (y_chip - y_sync).detach().
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from chiploop.architectures import ReadoutKind
from chiploop.errors import InvalidArgument
from chiploop.models import readout_score
from chiploop.run import Readout, RunResult, event_count_index
from chiploop.spec import NetworkSpec


def straight_through(sync: torch.Tensor, chip: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Forward: the chip's value. Backward: d/d(sync) = identity (the sync graph's gradient)."""
    chip_t = torch.as_tensor(np.asarray(chip) if not isinstance(chip, torch.Tensor) else chip)
    if tuple(chip_t.shape) != tuple(sync.shape):  # a reshape would pass [16, 2, K] off as [8, 4, K]
        raise InvalidArgument(
            "chip", f"shape {tuple(chip_t.shape)} is not the synchronous output's {tuple(sync.shape)} (samples, bins, neurons)"
        )
    return sync + (chip_t.to(dtype=sync.dtype, device=sync.device) - sync).detach()


def chip_outputs(result: RunResult, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(spikes [n, T, K], membranes [n, T, K]) of an output layer (counts summed over space when
    a layer has one); membranes are zeros unless the run had the layer in ``membrane_layers``
    (the counts readout does not ask for them)."""
    counts = result.counts[layer].astype(np.float32)
    if counts.ndim > 3:
        counts = counts.reshape(*counts.shape[:3], -1).sum(-1)
    if layer not in result.membranes:
        return torch.from_numpy(counts), torch.zeros(counts.shape, dtype=torch.float32)
    membranes = result.membranes[layer].astype(np.float32)
    membranes = membranes.reshape(*membranes.shape[:3], -1)[..., 0]
    return torch.from_numpy(counts), torch.from_numpy(membranes)


def chip_hidden_spikes(
    spec: NetworkSpec, result: RunResult, readout: Readout, layers: tuple[int, ...]
) -> dict[int, torch.Tensor]:
    """Per-neuron spike counts float32 [n, T, C, H, W] of monitored ``layers``, from the run's
    events (``spec`` deployed with those layers in its monitor list). Counted straight into
    float32 by torch: the per-neuron arrays are large and mostly zeros, and an int64 bincount
    and its conversion cost more than the few events do."""
    flat, size, layout = event_count_index(spec, result.output_events, result.output_offsets,
                                           replace(readout, spatial_counts=True))  # fmt: skip
    total = torch.zeros(size, dtype=torch.float32)
    total.index_add_(0, torch.from_numpy(flat), torch.ones(flat.size, dtype=torch.float32))
    return {i: total[layout[i][0]].view(layout[i][1]) for i in layers}


def chip_score(result: RunResult, layer: int, threshold: float, readout: ReadoutKind = "charge") -> np.ndarray:
    """The chip's ``readout_score`` of an output layer, [n, K]."""
    return readout_score(*chip_outputs(result, layer), threshold, readout).numpy()


def align_to_logits(score: np.ndarray, logit_per_unit: float) -> torch.Tensor:
    """cil-ann: a chip score (spikes + v/thr) in the ANN's logit units.

    The balanced conversion maps an ANN logit z to z / logit_per_unit units of
    output charge, so score * logit_per_unit is the chip's estimate of z: the
    softmax sees the chip's output on the scale the ANN's own logits have.
    """
    return torch.as_tensor(np.asarray(score), dtype=torch.float32) * float(logit_per_unit)
