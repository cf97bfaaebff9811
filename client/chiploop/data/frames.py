"""Events -> per-bin count frames, on exactly the bins of ``chiploop.run.Readout``.

Bin i holds the events with t0 + i*bin <= t < t0 + (i+1)*bin (i < T); events
outside [t0, t0 + T*bin) are not in any frame, just as the chip's outputs after
the last bin are not in any count.
"""

from __future__ import annotations

import numpy as np

from chiploop.errors import InvalidArgument
from chiploop.events import concatenate_events
from chiploop.limits import check_input_layer
from chiploop.run import Readout
from chiploop.spec import InputLayer


def _bin_index(t: np.ndarray, t0_us: int, bin_us: int, num_bins: int) -> tuple[np.ndarray, np.ndarray]:
    rel = t - t0_us
    inside = (rel >= 0) & (rel < bin_us * num_bins)
    return rel // bin_us, inside


#: N-MNIST's input: a 34 x 34 sensor, both polarities, nothing in between.
NMNIST_INPUT = InputLayer(sensor_size=(34, 34))


def bin_events(events: np.ndarray, readout: Readout, input_layer: InputLayer = NMNIST_INPUT) -> np.ndarray:
    """One sample -> float32 [T, *input_layer.out_shape] event counts."""
    return bin_batch([events], readout, input_layer)[0]


def bin_batch(samples: list[np.ndarray], readout: Readout, input_layer: InputLayer = NMNIST_INPUT) -> np.ndarray:
    """A batch of samples -> float32 [n, T, C, H, W] event counts, one bincount for all, where
    (C, H, W) is what the chip's input stage passes to layer 0 (``InputLayer.map_events``: pooling,
    crop, flips, merged polarities; the simulator maps its input with the same function). An event
    outside the sensor is refused (the chip refuses it too), not left out of the frames; one
    outside the crop window is dropped, as the chip drops it."""
    if readout.bin_us <= 0 or readout.num_bins < 1:
        raise InvalidArgument("readout", f"needs bin_us > 0 and num_bins >= 1, got {readout}")
    check_input_layer(input_layer)  # frames of a stage the chip cannot have would train for nothing
    channels, height, width = input_layer.out_shape
    n, num_bins = len(samples), readout.num_bins
    lengths = np.fromiter((len(s) for s in samples), np.int64, count=n)
    if n == 0:
        return np.zeros((0, num_bins, channels, height, width), np.float32)
    ev = concatenate_events(samples) if n > 1 else samples[0]
    if not input_layer.merge_polarities and ev.size and int(ev["p"].max()) > 1:
        # A polarity of 2 would index the next bin's (or sample's) frame; the chip refuses it too.
        raise InvalidArgument("events.p", f"polarity must be 0 or 1, got {int(ev['p'].max())}")
    sensor_h, sensor_w = input_layer.sensor_size
    if ev.size and (int(ev["x"].max()) >= sensor_w or int(ev["y"].max()) >= sensor_h):
        i = int(np.argmax((ev["x"] >= sensor_w) | (ev["y"] >= sensor_h)))
        sample = int(np.searchsorted(np.cumsum(lengths), i, side="right"))
        raise InvalidArgument(
            f"samples[{sample}].events[{i - int(lengths[:sample].sum())}]",
            f"(x={ev['x'][i]}, y={ev['y'][i]}) is outside the {sensor_h}x{sensor_w} sensor (sensor_size is (height, width))",
        )
    b, inside = _bin_index(ev["t"].astype(np.int64), readout.t0_us, readout.bin_us, num_bins)
    c, y, x, kept = input_layer.map_events(ev)
    c, y, x = c.astype(np.int64), y.astype(np.int64), x.astype(np.int64)
    sample = np.repeat(np.arange(n, dtype=np.int64), lengths)
    flat = (((sample * num_bins + b) * channels + c) * height + y) * width + x
    counts = np.bincount(flat[inside & kept], minlength=n * num_bins * channels * height * width)
    return counts.reshape(n, num_bins, channels, height, width).astype(np.float32)


def readout_for(num_bins: int, duration_us: int, t0_us: int = 0, **kwargs) -> Readout:
    """T equal bins covering [t0, t0 + duration) (the last bin may reach past it)."""
    if num_bins < 1:
        raise InvalidArgument("bins", f"must be >= 1, got {num_bins}")
    if duration_us < num_bins:
        raise InvalidArgument("duration_us", f"must be >= the number of bins, got {duration_us}")
    return Readout(t0_us=t0_us, bin_us=-(-duration_us // num_bins), num_bins=num_bins, **kwargs)


def trim_events(events: np.ndarray, readout: Readout) -> np.ndarray:
    """Only the events inside the readout window: what lies after it cannot change any bin."""
    t = events["t"]
    lo, hi = np.searchsorted(t, [readout.t0_us, readout.t_end_us], side="left")
    return events[lo:hi]
