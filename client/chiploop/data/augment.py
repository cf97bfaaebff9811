"""Augmentation applied to the events themselves, so the chip and the synchronous
model see the same augmented sample (a frame-level augmentation could not be
sent to the chip)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chiploop.events import take_events


@dataclass(frozen=True)
class Augment:
    """Random spatial shift by up to ``max_shift`` pixels per axis (events pushed
    off the sensor are dropped) and random dropping of a ``drop`` fraction of events."""

    max_shift: int = 2
    drop: float = 0.1
    sensor_size: tuple[int, int] = (34, 34)

    def __call__(self, events: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = events
        if self.drop > 0:
            out = take_events(out, rng.random(len(out)) >= self.drop)
        if self.max_shift > 0:
            dy, dx = rng.integers(-self.max_shift, self.max_shift + 1, size=2)
            x = out["x"].astype(np.int64) + dx
            y = out["y"].astype(np.int64) + dy
            height, width = self.sensor_size
            keep = (x >= 0) & (x < width) & (y >= 0) & (y < height)
            out = take_events(out, keep)  # a copy: the cached sample is never touched
            out["x"] = x[keep]
            out["y"] = y[keep]
        return out
