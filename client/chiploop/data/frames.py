"""Events -> per-bin count frames, on exactly the bins of ``chiploop.run.Readout``.

Bin i holds the events with t0 + i*bin <= t < t0 + (i+1)*bin (i < T); events
outside [t0, t0 + T*bin) are not in any frame, just as the chip's outputs after
the last bin are not in any count.
"""

from __future__ import annotations

import numpy as np

from chiploop.errors import InvalidArgument
from chiploop.events import concatenate_events
from chiploop.run import Readout


def _bin_index(t: np.ndarray, t0_us: int, bin_us: int, num_bins: int) -> tuple[np.ndarray, np.ndarray]:
    rel = t - t0_us
    inside = (rel >= 0) & (rel < bin_us * num_bins)
    return rel // bin_us, inside


def bin_events(
    events: np.ndarray,
    readout: Readout,
    sensor_size: tuple[int, int] = (34, 34),
    channels: int = 2,
) -> np.ndarray:
    """One sample -> float32 [T, channels, H, W] event counts (channels=1 merges polarities)."""
    return bin_batch([events], readout, sensor_size, channels)[0]


def bin_batch(
    samples: list[np.ndarray],
    readout: Readout,
    sensor_size: tuple[int, int] = (34, 34),
    channels: int = 2,
) -> np.ndarray:
    """A batch of samples -> float32 [n, T, channels, H, W] event counts, one bincount for all.
    An event outside the sensor is refused (the chip refuses it too), not left out of the frames."""
    if channels not in (1, 2):
        raise InvalidArgument("channels", f"must be 1 (merged polarities) or 2, got {channels}")
    if readout.bin_us <= 0 or readout.num_bins < 1:
        raise InvalidArgument("readout", f"needs bin_us > 0 and num_bins >= 1, got {readout}")
    height, width = sensor_size
    n, num_bins = len(samples), readout.num_bins
    lengths = np.fromiter((len(s) for s in samples), np.int64, count=n)
    if n == 0:
        return np.zeros((0, num_bins, channels, height, width), np.float32)
    ev = concatenate_events(samples) if n > 1 else samples[0]
    if channels == 2 and ev.size and int(ev["p"].max()) > 1:
        # A polarity of 2 would index the next bin's (or sample's) frame; the chip refuses it too.
        raise InvalidArgument("events.p", f"polarity must be 0 or 1, got {int(ev['p'].max())}")
    sample = np.repeat(np.arange(n, dtype=np.int64), lengths)
    b, inside = _bin_index(ev["t"].astype(np.int64), readout.t0_us, readout.bin_us, num_bins)
    x, y = ev["x"].astype(np.int64), ev["y"].astype(np.int64)
    if ev.size and (int(x.max()) >= width or int(y.max()) >= height):
        i = int(np.argmax((x >= width) | (y >= height)))
        j = i - int(lengths[: sample[i]].sum())
        raise InvalidArgument(
            f"samples[{sample[i]}].events[{j}]",
            f"(x={x[i]}, y={y[i]}) is outside the {height}x{width} sensor (sensor_size is (height, width))",
        )
    p = ev["p"].astype(np.int64) if channels == 2 else np.zeros(len(ev), np.int64)
    flat = (((sample * num_bins + b) * channels + p) * height + y) * width + x
    counts = np.bincount(flat[inside], minlength=n * num_bins * channels * height * width)
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
