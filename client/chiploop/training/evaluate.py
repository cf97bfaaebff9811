"""Accuracy of a method's model in software (its own model, the sync SNN in float and in
integers) and on the chip, on the same samples."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch

from chiploop.data.loader import EventDataset, iterate_batches
from chiploop.errors import InvalidArgument
from chiploop.training.chip import Chip
from chiploop.training.methods import Method
from chiploop.training.substitute import chip_score


@dataclass
class EvalResult:
    n: int
    software: float  # the method's own trained model (ANN for ANN routes, int SNN otherwise)
    sync_float: float  # the SNN, synchronous, float weights and thresholds
    sync_int: float  # the SNN, synchronous, the exact integer network sent to the chip
    chip: float | None  # the same integer network on the chip (None: no chip)
    agreement: float | None  # fraction of samples where chip and sync int predict the same class
    chip_synops: float | None = None  # mean synaptic operations per sample on the chip
    # Per sample, in evaluation order (for paired comparisons of two models on the same samples):
    labels: np.ndarray | None = field(default=None, repr=False)
    software_pred: np.ndarray | None = field(default=None, repr=False)
    chip_pred: np.ndarray | None = field(default=None, repr=False)

    PER_SAMPLE = ("labels", "software_pred", "chip_pred")

    @property
    def degradation(self) -> float | None:
        """Software minus chip accuracy, in points (the paper's Table 1 column)."""
        return None if self.chip is None else 100.0 * (self.software - self.chip)

    def as_dict(self) -> dict:
        """The summary figures (without the per-sample arrays)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self.PER_SAMPLE}
        d["degradation"] = self.degradation
        return d


@torch.no_grad()
def evaluate(
    method: Method,
    dataset: EventDataset,
    indices: np.ndarray,
    chip: Chip | None,
    batch_size: int = 100,
) -> EvalResult:
    """One pass over ``indices``: the chip runs each batch while the software models do."""
    snn = method.snn()
    snn.eval()
    readout = method.chip_readout
    last = snn.num_layers - 1
    threshold = snn.thresholds(last, quantized=True)[0]
    if chip is not None:
        chip.deploy(method.spec())
    hits = {"software": 0, "sync_float": 0, "sync_int": 0, "chip": 0, "agree": 0}
    synops = 0.0
    n = 0
    per_sample: dict[str, list[np.ndarray]] = {"labels": [], "software_pred": [], "chip_pred": []}
    for batch in iterate_batches(dataset, indices, method.readout, batch_size, input_layer=method.input_layer):
        batch.check_labels(method.num_classes)
        pending = chip.run_async(batch.events, readout) if chip is not None else None
        frames = method.tensor(batch.frames)
        labels = batch.labels
        sync_int = snn(frames, quantized=True, ticks=method.ticks).score.argmax(1).cpu().numpy()
        sync_float = snn(frames, quantized=False, ticks=method.ticks).score.argmax(1).cpu().numpy()
        hits["sync_int"] += int((sync_int == labels).sum())
        hits["sync_float"] += int((sync_float == labels).sum())
        software = method.software_scores(frames).argmax(1).cpu().numpy()
        hits["software"] += int((software == labels).sum())
        per_sample["labels"].append(labels)
        per_sample["software_pred"].append(software)
        if pending is not None:
            result = pending.result()
            on_chip = chip_score(result, last, threshold, snn.readout).argmax(1)
            hits["chip"] += int((on_chip == labels).sum())
            hits["agree"] += int((on_chip == sync_int).sum())
            per_sample["chip_pred"].append(on_chip)
            synops += float(result.counter("synops").sum())
        n += len(batch)
    with_chip = chip is not None and n > 0
    return EvalResult(
        n=n,
        software=hits["software"] / max(n, 1),
        sync_float=hits["sync_float"] / max(n, 1),
        sync_int=hits["sync_int"] / max(n, 1),
        chip=hits["chip"] / n if with_chip else None,
        agreement=hits["agree"] / n if with_chip else None,
        chip_synops=synops / n if with_chip else None,
        **{k: np.concatenate(v) if v else None for k, v in per_sample.items()},
    )


def pool_results(results: list[EvalResult]) -> EvalResult:
    """Several measurements as one, over all their samples in order (each figure weighted by its
    measurement's size; a chip figure only when every measurement has one)."""
    if not results:
        raise InvalidArgument("results", "give at least one measurement to pool")
    n = sum(r.n for r in results)

    def weighted(name: str) -> float | None:
        values = [getattr(r, name) for r in results]
        if any(v is None for v in values):
            return None
        return sum(v * r.n for v, r in zip(values, results, strict=True)) / max(n, 1)

    def joined(name: str) -> np.ndarray | None:
        arrays = [getattr(r, name) for r in results]
        return None if any(a is None for a in arrays) else np.concatenate(arrays)

    return EvalResult(
        n=n,
        software=weighted("software"),
        sync_float=weighted("sync_float"),
        sync_int=weighted("sync_int"),
        chip=weighted("chip"),
        agreement=weighted("agreement"),
        chip_synops=weighted("chip_synops"),
        **{name: joined(name) for name in EvalResult.PER_SAMPLE},
    )


def paired_margin(model: list[EvalResult], baseline: list[EvalResult]) -> dict | None:
    """``model`` minus ``baseline`` accuracy on the chip, pooled over every sample both were
    measured on (in order, repeat by repeat) and paired per sample: the margin in points, its
    standard error, and how many samples only one of them got right. None without chip results."""
    if any(r.chip_pred is None for r in model + baseline):
        return None
    if len(model) != len(baseline) or any(
        not np.array_equal(a.labels, b.labels) for a, b in zip(model, baseline, strict=True)
    ):
        raise InvalidArgument("results", "the two models were not measured on the same samples")
    right_model = np.concatenate([r.chip_pred == r.labels for r in model]).astype(float)
    right_baseline = np.concatenate([r.chip_pred == r.labels for r in baseline]).astype(float)
    diff = right_model - right_baseline
    n = len(diff)
    se = float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return {
        "samples": n,
        "margin": 100 * float(diff.mean()),
        "standard_error": 100 * se,
        "only_model_right": int((diff > 0).sum()),
        "only_baseline_right": int((diff < 0).sum()),
    }
