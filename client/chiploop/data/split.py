"""A deterministic, stratified train/validation split, and its cross-validation folds."""

from __future__ import annotations

import math

import numpy as np

from chiploop.errors import InvalidArgument


def num_folds(val_fraction: float) -> int:
    """How many disjoint validation folds of ``val_fraction`` cover each class (0.2: 5)."""
    if not 0.0 < val_fraction < 1.0:
        raise InvalidArgument("val_fraction", f"must be in (0, 1) for folds, got {val_fraction}")
    return math.ceil(1.0 / val_fraction - 1e-9)


def check_fold(fold: int, val_fraction: float, field: str = "fold") -> None:
    """Refuse a fold the split does not have (fold 0, the plain split, exists for every fraction)."""
    if fold != 0 and not 0 <= fold < num_folds(val_fraction):
        raise InvalidArgument(field, f"must be in 0..{num_folds(val_fraction) - 1} for val_fraction "
                                     f"{val_fraction:g}, got {fold}")


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int, fold: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices), each class split in the same proportion.

    Each class is shuffled once by ``seed``; fold k validates on the k-th block of
    ``val_fraction`` of it (block k spans ``round(n*f*k)`` to ``round(n*f*(k+1))``,
    the last fold ends at ``n``), so the ``num_folds`` folds of one seed validate
    every sample exactly once: k-fold cross-validation. Fold 0 is the plain split.
    The same labels, fraction, seed and fold give the same split on every machine
    (numpy's PCG64 stream is platform-independent). Indices come back sorted.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise InvalidArgument("val_fraction", f"must be in [0, 1), got {val_fraction}")
    check_fold(fold, val_fraction)
    last = val_fraction > 0 and fold == num_folds(val_fraction) - 1  # takes the remainder of each class
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        lo = int(round(len(idx) * val_fraction * fold))
        hi = len(idx) if last else int(round(len(idx) * val_fraction * (fold + 1)))
        val.append(idx[lo:hi])
        train.append(np.concatenate([idx[:lo], idx[hi:]]))
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
