"""The one event dtype of chiploop, shared by the data reader, client, server and tests.

Events are packed structured numpy arrays, little-endian, no padding, so a batch is
one contiguous buffer that travels as raw bytes (tonic also uses one structured
dtype for events everywhere).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from chiploop.errors import InvalidArgument

#: A DVS event: sensor column x, row y, polarity p (1 = ON, 0 = OFF), time t in us.
DVS_EVENT_DTYPE = np.dtype([("x", "<u2"), ("y", "<u2"), ("p", "u1"), ("t", "<i8")])

#: The latest timestamp a chip input may carry, in us (about 36,000 years): past any recording, and
#: far enough from int64's end that times plus hop latencies, bins and leak periods cannot overflow.
MAX_TIME_US = 1 << 60

#: numpy kinds of plain numbers: bool, signed, unsigned, float (what an Array may carry on the wire).
NUMERIC_KINDS = "biuf"

#: A spike leaving the chip (or a monitored core): source layer, channel k, row y,
#: column x (the neuron's own coordinates, before the route's pooling), time t in us.
CHIP_EVENT_DTYPE = np.dtype(
    [("layer", "<i2"), ("k", "<i2"), ("y", "<i2"), ("x", "<i2"), ("t", "<i8")]
)


def _raw(events: np.ndarray) -> np.ndarray:
    # The same bytes as opaque records: numpy copies those as memory, while it copies a
    # structured dtype field by field per element (25-30 ns an event here, 15-30x slower).
    return events.view(np.dtype((np.void, events.dtype.itemsize)))


def concatenate_events(parts: Sequence[np.ndarray]) -> np.ndarray:
    """``np.concatenate`` for event arrays of one structured dtype, at the speed of copying bytes."""
    if not parts:
        raise ValueError("concatenate_events needs at least one array (its dtype is the result's)")
    dtype = parts[0].dtype
    if any(part.dtype != dtype for part in parts):
        raise TypeError(f"concatenate_events: every array must have dtype {dtype}")
    return np.concatenate([_raw(part) for part in parts]).view(dtype)


class KeptEvents:
    """A session's chip events in emission order, numbered from 0 since it opened or was cleared;
    the newest ``limit`` of them are kept (None: all). The oldest go first, whole chunks or the
    front of one; ``first`` is the number of the oldest kept, ``total`` how many came in all.

    Memory: a chunk trimmed at the front is kept as a view of it while that holds at least half
    of its memory, a copy after, so at most about twice ``limit`` events are held. Reads join the
    chunks in place once after new ones came: reading in pages copies each page, not the whole
    list again."""

    def __init__(self, limit: int | None = None) -> None:
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0):
            raise InvalidArgument("limit", f"must be an integer >= 0 or None, got {limit!r}")
        self.limit = None if limit is None else int(limit)
        self.clear()

    def clear(self) -> None:
        self._chunks: deque[np.ndarray] = deque()
        self.total = 0
        self.first = 0

    def __len__(self) -> int:
        return self.total - self.first

    def append(self, events: np.ndarray) -> None:
        if events.size:
            self._chunks.append(events)
            self.total += events.size
        excess = 0 if self.limit is None else len(self) - self.limit
        while excess > 0:
            head = self._chunks[0]
            if head.size <= excess:
                self._chunks.popleft()
                taken = head.size
            else:
                rest = head[excess:]
                owner = rest.base if isinstance(rest.base, np.ndarray) else rest
                self._chunks[0] = rest if 2 * rest.nbytes >= owner.nbytes else rest.copy()
                taken = excess
            self.first += taken
            excess -= taken

    def read(self, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """A copy of the events numbered ``start`` (default: the oldest kept) up to ``stop``
        (default: the newest); asking for events no longer kept is InvalidArgument."""
        start = self.first if start is None else int(start)
        if start < self.first:
            raise InvalidArgument(
                "start", f"events before {self.first} are no longer kept (the newest {self.limit} are), got {start}"
            )
        if not self._chunks:
            return np.zeros(0, CHIP_EVENT_DTYPE)
        if len(self._chunks) > 1:
            self._chunks = deque([concatenate_events(list(self._chunks))])
        stop = self.total if stop is None else max(start, min(int(stop), self.total))
        return concatenate_events([self._chunks[0][start - self.first : stop - self.first]])


def take_events(events: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``events[index]`` (an integer or boolean index: a copy) at the speed of copying bytes."""
    return _raw(events)[index].view(events.dtype)


def make_dvs_events(x: ArrayLike, y: ArrayLike, p: ArrayLike, t: ArrayLike) -> np.ndarray:
    """Build a DVS event array from four equal-length sequences of integers (t in us). A value
    its field cannot hold exactly (a float time in seconds, x = 65541 in a uint16) is refused
    naming the field and the first such event, never cast."""
    columns = {"x": np.asarray(x), "y": np.asarray(y), "p": np.asarray(p), "t": np.asarray(t)}
    n = len(columns["x"]) if columns["x"].ndim == 1 else None
    events = np.empty(n or 0, dtype=DVS_EVENT_DTYPE)
    for name, values in columns.items():
        if n is None or values.shape != (n,):
            raise InvalidArgument(name, f"x, y, p and t must be one-dimensional, of one length; {name} has shape {values.shape}")
        if values.dtype.kind not in NUMERIC_KINDS:
            raise InvalidArgument(name, f"must be integers, got dtype {values.dtype}")
        kind = DVS_EVENT_DTYPE[name]
        info = np.iinfo(kind)
        if values.dtype.kind == "f":  # compared as floats: the bounds exactly (2**63 - 1 rounds up to 2**63)
            with np.errstate(all="ignore"):
                bad = ~np.isfinite(values) | (values != np.round(values))
                bad |= (values < float(info.min)) | (values >= float(info.max + 1))
        else:
            bad = (values < info.min) | (values > info.max)
        if bad.any():
            i = int(np.argmax(bad))
            raise InvalidArgument(f"{name}[{i}]", f"{values[i].item()!r} is not an integer in {info.min}..{info.max} ({kind})")
        events[name] = values
    return events


def check_dvs_layout(events: object, field: str = "events") -> None:
    """Refuse anything but a one-dimensional DVS_EVENT_DTYPE array (cheap: no pass over the data)."""
    if not isinstance(events, np.ndarray) or events.dtype != DVS_EVENT_DTYPE:
        got = getattr(events, "dtype", type(events).__name__)
        raise InvalidArgument(field, f"dtype must be chiploop.events.DVS_EVENT_DTYPE {DVS_EVENT_DTYPE.descr}, got {got}")
    if events.ndim != 1:
        raise InvalidArgument(field, f"must be one-dimensional, got shape {events.shape}")


def check_dvs_events(
    events: np.ndarray, sensor_size: tuple[int, int], field: str = "events", offsets: np.ndarray | None = None
) -> None:
    """Refuse an event array the chip cannot take, naming the field and the first bad event.

    sensor_size is (height, width). Timestamps must be non-negative and sorted
    (ties keep arrival order), polarity 0 or 1, coordinates inside the sensor.
    With ``offsets`` (a batch of concatenated samples, checked by ``check_offsets``)
    timestamps need only be sorted within each sample.
    """
    check_dvs_layout(events, field)
    if offsets is not None:
        check_offsets(offsets, events.size)
    if events.size == 0:
        return
    height, width = sensor_size
    t = events["t"]
    # Reductions first: they make no temporary arrays (half the time of comparisons on a
    # batch). The first bad event is looked for only when one is there.
    if events["x"].max() >= width or events["y"].max() >= height or events["p"].max() > 1 or (
        t.min() < 0 or t.max() > MAX_TIME_US
    ):
        checks = (
            ("x", lambda x: x >= width, f"x must be < sensor width {width}"),
            ("y", lambda y: y >= height, f"y must be < sensor height {height}"),
            ("p", lambda p: p > 1, "p must be 0 or 1"),
            ("t", lambda t: t < 0, "t must be >= 0"),
            ("t", lambda t: t > MAX_TIME_US, f"t must be <= {MAX_TIME_US} (2**60 us)"),
        )
        for name, is_bad, message in checks:
            bad = is_bad(events[name])
            if bad.any():
                i = int(np.argmax(bad))
                raise InvalidArgument(f"{field}[{i}].{name}", f"{message}, got {events[name][i]}")
    unsorted = t[1:] < t[:-1]
    if offsets is not None:
        starts = offsets[1:-1]
        # Each sample's clock starts again: a drop in t across a sample boundary is fine.
        unsorted[starts[(starts > 0) & (starts < events.size)] - 1] = False
    if unsorted.any():
        i = int(np.argmax(unsorted)) + 1
        where = "" if offsets is None else f" (sample {int(np.searchsorted(offsets, i, side='right')) - 1})"
        raise InvalidArgument(
            f"{field}[{i}].t", f"timestamps must be sorted, {t[i]} follows {t[i - 1]}{where}"
        )


def check_offsets(offsets: np.ndarray, num_events: int, field: str = "offsets") -> None:
    """Refuse batch offsets that do not cut ``num_events`` events into consecutive samples.

    offsets is int64 [n + 1]: sample i is events[offsets[i]:offsets[i + 1]], so it starts
    at 0, never decreases and ends at the number of events (n may be 0).
    """
    if not isinstance(offsets, np.ndarray) or offsets.dtype != np.int64 or offsets.ndim != 1:
        got = f"{getattr(offsets, 'dtype', type(offsets).__name__)} {np.shape(offsets)}"
        raise InvalidArgument(field, f"must be a 1-D int64 array [n + 1], got {got}")
    if offsets.size == 0:
        raise InvalidArgument(field, "must hold at least one entry (0 for an empty batch)")
    if offsets[0] != 0:
        raise InvalidArgument(f"{field}[0]", f"must be 0, got {offsets[0]}")
    if offsets[-1] != num_events:
        raise InvalidArgument(
            f"{field}[{offsets.size - 1}]", f"must equal the number of events {num_events}, got {offsets[-1]}"
        )
    down = offsets[1:] < offsets[:-1]
    if down.any():
        i = int(np.argmax(down)) + 1
        raise InvalidArgument(f"{field}[{i}]", f"offsets must not decrease, {offsets[i]} follows {offsets[i - 1]}")

