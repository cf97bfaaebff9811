"""Batches of (events, frames, labels) for training and evaluation.

The events travel to the chip, the frames (the same events binned on the
readout's bins) into the synchronous model: one source for both.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from chiploop.data.augment import Augment
from chiploop.data.frames import bin_batch, trim_events
from chiploop.run import Readout


class EventDataset(Protocol):
    labels: np.ndarray
    files: list  # where each sample comes from (its identity, e.g. to check two runs saw the same samples)

    def __len__(self) -> int: ...
    def events(self, index: int) -> np.ndarray: ...


@dataclass
class Batch:
    indices: np.ndarray  # dataset indices of the samples
    events: list[np.ndarray]  # per sample, trimmed to the readout window (what the chip gets)
    frames: np.ndarray  # float32 [n, T, 2, H, W] counts on the readout's bins
    labels: np.ndarray  # int64 [n]

    def __len__(self) -> int:
        return len(self.indices)


def make_batch(
    dataset: EventDataset,
    indices: np.ndarray,
    readout: Readout,
    augment: Augment | None = None,
    rng: np.random.Generator | None = None,
) -> Batch:
    events = _sample_events(dataset, indices, readout, augment, rng)
    sensor = getattr(dataset, "sensor_size", (34, 34))
    frames = bin_batch(events, readout, sensor_size=sensor)
    return Batch(np.asarray(indices), events, frames, np.asarray(dataset.labels)[np.asarray(indices, np.int64)])


def _sample_events(
    dataset: EventDataset,
    indices: np.ndarray,
    readout: Readout,
    augment: Augment | None,
    rng: np.random.Generator | None,
) -> list[np.ndarray]:
    events = [trim_events(dataset.events(int(i)), readout) for i in indices]
    if augment is not None:
        rng = rng if rng is not None else np.random.default_rng()
        events = [augment(ev, rng) for ev in events]
    return events


def iterate_batches(
    dataset: EventDataset,
    indices: np.ndarray,
    readout: Readout,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    augment: Augment | None = None,
    drop_last: bool = False,
    skip: int = 0,
) -> Iterator[Batch]:
    """Batches over ``indices``; with shuffle, the order and the augmentation follow ``seed``.

    ``skip``: leave out the first batches (a run resumed inside an epoch); the later ones are
    the same as without it, augmentation included."""
    rng = np.random.default_rng(seed)
    order = np.asarray(indices)
    if shuffle:
        order = order[rng.permutation(len(order))]
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    for number, start in enumerate(range(0, stop, batch_size)):
        chunk = order[start : start + batch_size]
        if number < skip:
            if augment is not None:  # draw what the skipped batches drew, so the rest are augmented the same
                _sample_events(dataset, chunk, readout, augment, rng)
            continue
        yield make_batch(dataset, chunk, readout, augment, rng)


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)
