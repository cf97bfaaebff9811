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
from chiploop.errors import InvalidArgument
from chiploop.run import Readout
from chiploop.spec import InputLayer


class EventDataset(Protocol):
    labels: np.ndarray
    files: list  # where each sample comes from (its identity, e.g. to check two runs saw the same samples)
    sensor_size: tuple[int, int]  # (height, width): frames have this size, and events must fall inside

    def __len__(self) -> int: ...
    def events(self, index: int) -> np.ndarray: ...


@dataclass
class Batch:
    indices: np.ndarray  # dataset indices of the samples
    events: list[np.ndarray]  # per sample, trimmed to the readout window (what the chip gets)
    frames: np.ndarray  # float32 [n, T, channels, H, W] counts on the readout's bins
    labels: np.ndarray  # int64 [n]

    def __len__(self) -> int:
        return len(self.indices)

    def check_labels(self, num_classes: int) -> None:
        """Refuse a label that is not one of a network's ``num_classes`` outputs: the loss would
        fail on it without saying which sample, and an evaluation would count it wrong."""
        bad = (self.labels < 0) | (self.labels >= num_classes)
        if bad.any():
            i = int(np.argmax(bad))
            raise InvalidArgument(
                f"labels[{int(self.indices[i])}]", f"{int(self.labels[i])} is not a class of the network (0..{num_classes - 1})"
            )


def make_batch(
    dataset: EventDataset,
    indices: np.ndarray,
    readout: Readout,
    augment: Augment | None = None,
    rng: np.random.Generator | None = None,
    input_layer: InputLayer | None = None,
) -> Batch:
    """The samples ``indices`` of ``dataset``: their events in the readout window (what the chip
    gets) and their frames as the chip's ``input_layer`` passes them to layer 0 (by default the
    dataset's sensor, both polarities: the network's input stage when it pools, crops or merges)."""
    if input_layer is None:
        sensor = getattr(dataset, "sensor_size", None)
        if sensor is None:  # a default would crop a larger sensor's events out of the frames unseen
            raise InvalidArgument("dataset", f"{type(dataset).__name__} has no sensor_size (height, width)")
        input_layer = InputLayer(sensor_size=tuple(sensor))
    if augment is not None and tuple(augment.sensor_size) != tuple(input_layer.sensor_size):
        raise InvalidArgument(  # it would drop the events it shifts past its own edge
            "augment.sensor_size", f"is {tuple(augment.sensor_size)}, the data's sensor is {tuple(input_layer.sensor_size)}"
        )
    events = _sample_events(dataset, indices, readout, augment, rng)
    frames = bin_batch(events, readout, input_layer)
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
    input_layer: InputLayer | None = None,
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
        yield make_batch(dataset, chunk, readout, augment, rng, input_layer)


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)
