"""A deterministic, stratified train/validation split."""

from __future__ import annotations

import numpy as np

from chiploop.errors import InvalidArgument


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices), each class split in the same proportion.

    The same labels, fraction and seed give the same split on every machine
    (numpy's PCG64 stream is platform-independent). Indices come back sorted.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise InvalidArgument("val_fraction", f"must be in [0, 1), got {val_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = int(round(len(idx) * val_fraction))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
