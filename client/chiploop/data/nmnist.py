"""The N-MNIST reader (original 40-bit ``.bin`` encoding) and a dataset over its folders.

Two layouts are understood:

- the bundled one: a folder holding ``labels.csv`` (``sample,label``) and the
  ``<id>.bin`` files it names (``nmnist-small/train``, or its parent with a
  ``train/`` or ``test/`` split below it);
- the full N-MNIST one: ``Train/<digit>/<id>.bin`` and ``Test/<digit>/<id>.bin``
  (or a split folder holding the digit folders directly).

Decoded samples are cached in memory (1,000 samples are ~16 MB of events; the
60,000 full training samples ~3.2 GB), up to ``$CHIPLOOP_CACHE_GB`` per dataset
(default 4): past it, samples are decoded again on every read.
"""

from __future__ import annotations

import csv
import os
import stat
from pathlib import Path

import numpy as np

from chiploop.errors import InvalidArgument
from chiploop.events import DVS_EVENT_DTYPE, take_events

#: (height, width) of the ATIS recordings of N-MNIST.
NMNIST_SENSOR_SIZE: tuple[int, int] = (34, 34)
NUM_CLASSES = 10
ENV_DATA_DIR = "CHIPLOOP_NMNIST_DIR"
ENV_CACHE_GB = "CHIPLOOP_CACHE_GB"
DEFAULT_CACHE_GB = 4.0
OVERFLOW_MARKER_Y = 240
OVERFLOW_INCREMENT_US = 1 << 13


def default_data_dir() -> Path:
    """``$CHIPLOOP_NMNIST_DIR``, else the bundled ``<repo>/../shared/data/nmnist-small``."""
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env)
    repo_root = Path(__file__).resolve().parents[3]
    return repo_root.parent / "shared" / "data" / "nmnist-small"


def decode_nmnist_bytes(raw: bytes | np.ndarray, source: str = "data") -> np.ndarray:
    """Decode the 40-bit big-endian N-MNIST encoding into DVS_EVENT_DTYPE events, sorted by time.

    bits 39..32: x, 31..24: y, 23: polarity (1 = ON), 22..0: timestamp in us.
    An event with y = 240 is a timestamp-overflow marker, not an event.
    """
    buf = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, (bytes, bytearray, memoryview)) else raw
    if buf.size % 5:
        raise InvalidArgument(source, f"size {buf.size} bytes is not a multiple of 5 (40-bit events)")
    rows = buf.reshape(-1, 5).astype(np.int64)
    t = ((rows[:, 2] & 0x7F) << 16) | (rows[:, 3] << 8) | rows[:, 4]
    overflow = rows[:, 1] == OVERFLOW_MARKER_Y
    if overflow.any():
        # The data set authors' reader (Read_Ndataset.m; tonic copies it) adds 2**13 us
        # to every event from a marker on, and drops the marker.
        t = t + np.cumsum(overflow) * OVERFLOW_INCREMENT_US
        rows, t = rows[~overflow], t[~overflow]
    events = np.empty(rows.shape[0], dtype=DVS_EVENT_DTYPE)
    events["x"] = rows[:, 0]
    events["y"] = rows[:, 1]
    events["p"] = rows[:, 2] >> 7
    events["t"] = t
    check_on_sensor(events, source)
    t = events["t"]
    if t.size > 1 and (t[1:] < t[:-1]).any():
        # Recordings are time-ordered; a stable sort keeps ties in arrival order if one is not.
        events = take_events(events, np.argsort(t, kind="stable"))
    return events


def check_on_sensor(events: np.ndarray, source: str) -> None:
    """Refuse events outside N-MNIST's 34 x 34 sensor, naming the first."""
    height, width = NMNIST_SENSOR_SIZE
    for name, size in (("x", width), ("y", height)):
        bad = events[name] >= size
        if bad.any():
            i = int(np.argmax(bad))
            raise InvalidArgument(
                f"{source}[{i}].{name}", f"must be < {size} (N-MNIST is 34x34), got {events[name][i]}"
            )


def read_nmnist_bin(path: str | os.PathLike) -> np.ndarray:
    """Read one N-MNIST ``.bin`` file into a DVS_EVENT_DTYPE array (time-sorted)."""
    path = Path(path)
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise InvalidArgument("path", f"no such file: {path}") from None
    except OSError as exc:  # a folder, a symlink loop, no permission
        raise InvalidArgument(str(path), f"cannot read: {exc.strerror or exc}") from None
    return decode_nmnist_bytes(raw, source=str(path))


def check_files(files: list[Path]) -> None:
    """Refuse, when a data set is opened, every file that could not be decoded later: a missing or
    unreadable one, a folder, a size that is no whole number of 40-bit events. Found only when first
    read, one would end a run after an epoch of training (about 0.3 s for N-MNIST's 70,000 files)."""
    for path in files:
        try:
            st = path.stat()
        except OSError as exc:
            raise InvalidArgument(str(path), f"cannot read: {exc.strerror or exc}") from None
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(str(path), "is not a file")
        if st.st_size % 5:
            raise InvalidArgument(str(path), f"size {st.st_size} bytes is not a multiple of 5 (40-bit events)")


def _read_labels_csv(folder: Path) -> tuple[list[Path], np.ndarray]:
    files, labels = [], []
    with open(folder / "labels.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"sample", "label"} <= set(reader.fieldnames):
            raise InvalidArgument(f"{folder / 'labels.csv'}", "needs a header 'sample,label'")
        for line, row in enumerate(reader, start=2):
            name = row["sample"].strip()
            try:
                label = int(row["label"])
            except (TypeError, ValueError):
                raise InvalidArgument(f"{folder / 'labels.csv'}:{line}.label", f"not an integer: {row['label']!r}") from None
            if not 0 <= label < NUM_CLASSES:
                raise InvalidArgument(f"{folder / 'labels.csv'}:{line}.label", f"must be 0..9, got {label}")
            files.append(folder / (name if name.lower().endswith(".bin") else f"{name}.bin"))
            labels.append(label)
    return files, np.asarray(labels, np.int64)


def _read_digit_folders(folder: Path) -> tuple[list[Path], np.ndarray]:
    files, labels = [], []
    for digit in range(NUM_CLASSES):
        try:
            found = [f for f in (folder / str(digit)).iterdir() if f.suffix.lower() == ".bin"]
        except OSError:  # missing, not a folder, a symlink loop
            found = []
        for f in sorted(found, key=_natural_key):
            files.append(f)
            labels.append(digit)
    labels = np.asarray(labels, np.int64)
    check_every_digit(labels, folder)
    return files, labels


def check_every_digit(labels: np.ndarray, folder: Path) -> None:
    """Refuse a digit-folder layout (chiploop's or tonic's) that lacks some digit's samples: an
    incomplete copy. No samples at all is the caller's to refuse, saying where it looked."""
    missing = sorted(set(range(NUM_CLASSES)) - set(labels.tolist()))
    if labels.size and missing:
        raise InvalidArgument(
            "data", f"no samples of digit(s) {', '.join(map(str, missing))} under {folder} (missing or empty "
            "digit folders: an incomplete copy of N-MNIST?)",
        )


def _natural_key(path: Path) -> tuple[int, str]:
    stem = path.stem
    return (int(stem), stem) if stem.isdigit() else (1 << 62, stem)


SPLIT_NAMES = ("train", "test")


def check_split(split: str) -> str:
    """``split`` as a known split name, in lower case (``Train`` is ``train``)."""
    if not isinstance(split, str) or split.lower() not in SPLIT_NAMES:
        raise InvalidArgument("split", f"must be one of {', '.join(SPLIT_NAMES)}, got {split!r}")
    return split.lower()


def split_folder(root: Path, split: str) -> Path:
    """The folder that holds one split's files, whatever the layout: ``root`` itself (a split
    folder, unless it is named after the other split), else ``root/<split>`` in any case."""
    split = check_split(split)  # lower case from here on
    candidates = [root / split, root / split.capitalize()]
    if root.name.lower() not in SPLIT_NAMES or root.name.lower() == split:
        candidates.insert(0, root)
    for c in candidates:
        if (c / "labels.csv").is_file() or any((c / str(d)).is_dir() for d in range(NUM_CLASSES)):
            return c
    raise InvalidArgument(
        "data",
        f"no N-MNIST data under {root} for split {split!r}: expected labels.csv, "
        f"{split}/labels.csv or {split.capitalize()}/<digit>/*.bin",
    )


def _cache_gb(value: float | None) -> float:
    if value is None:
        text = os.environ.get(ENV_CACHE_GB, "")
        try:
            value = float(text) if text.strip() else DEFAULT_CACHE_GB
        except ValueError:
            raise InvalidArgument(ENV_CACHE_GB, f"must be a number of GB, got {text!r}") from None
    if not value >= 0:
        raise InvalidArgument("cache_gb", f"must be >= 0, got {value}")
    return value


class CachedEvents:
    """What every N-MNIST source shares: ``files`` and ``labels``, and ``ds[i] -> (events,
    label)`` with each sample decoded once (``_decode``) and cached in memory, read-only.

    The cache holds at most ``cache_gb`` (default ``$CHIPLOOP_CACHE_GB``, else 4 GB) of
    events; samples read after it is full are decoded on every read. Filling once and
    never evicting is the best a cache can do for the uniformly shuffled epochs training
    reads (any policy hits in proportion to its size there), and it costs no bookkeeping.
    """

    sensor_size = NMNIST_SENSOR_SIZE
    num_classes = NUM_CLASSES
    files: list[Path]
    labels: np.ndarray

    def __init__(self, cache: bool = True, cache_gb: float | None = None) -> None:
        self.cache = cache
        self.cache_limit_bytes = int(_cache_gb(cache_gb) * 2**30)
        self.cached_bytes = 0
        self._cache: dict[int, np.ndarray] = {}

    def _decode(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.files)

    @property
    def ids(self) -> list[str]:
        return [f.stem for f in self.files]

    def events(self, index: int) -> np.ndarray:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} out of range (dataset has {len(self)})")
        index %= len(self)
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        events = self._decode(index)
        events.flags.writeable = False  # cached or not, a sample reads the same way
        if self.cache and self.cached_bytes + events.nbytes <= self.cache_limit_bytes:
            self._cache[index] = events  # shared by every caller: hence read-only
            self.cached_bytes += events.nbytes
        return events

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.events(index), int(self.labels[int(index)])

    def preload(self) -> CachedEvents:
        """Decode every sample now (a second pass is then free)."""
        for i in range(len(self)):
            self.events(i)
        return self


class NMNIST(CachedEvents):
    """An N-MNIST split read with ``read_nmnist_bin``, decoded once and cached in memory.

    ``root`` is a folder in either layout (see the module doc); ``split`` picks
    ``train``/``test`` below it when the root is not already a split folder.
    """

    def __init__(
        self, root: str | os.PathLike | None = None, split: str = "train", cache: bool = True,
        cache_gb: float | None = None,
    ) -> None:
        super().__init__(cache, cache_gb)
        self.root = Path(root) if root is not None else default_data_dir()
        if not self.root.is_dir():
            raise InvalidArgument("data", f"not a folder: {self.root}")
        self.folder = split_folder(self.root, split)
        if (self.folder / "labels.csv").is_file():
            self.files, self.labels = _read_labels_csv(self.folder)
        else:
            self.files, self.labels = _read_digit_folders(self.folder)
        if not self.files:
            raise InvalidArgument("data", f"no samples found in {self.folder}")
        check_files(self.files)

    def _decode(self, index: int) -> np.ndarray:
        return read_nmnist_bin(self.files[index])
