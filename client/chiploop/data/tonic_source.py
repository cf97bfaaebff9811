"""N-MNIST through tonic (optional): for users who already keep tonic's folder layout.

Never downloads. tonic fetches the archive whenever its own check fails (the
archive itself missing beside the extracted folder, or fewer than 10,000 files),
even if the extracted samples are all there. Here tonic's dataset is subclassed:
the check accepts an extracted folder that holds ``.bin`` files, and the
download raises a clear error instead of reaching the network.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from chiploop.data.nmnist import CachedEvents, check_every_digit, check_files, check_on_sensor, check_split
from chiploop.errors import BackendUnavailable, InvalidArgument
from chiploop.events import DVS_EVENT_DTYPE, take_events


def tonic_available() -> bool:
    return importlib.util.find_spec("tonic") is not None


def to_dvs_events(tonic_events: np.ndarray) -> np.ndarray:
    """tonic's structured (x, y, t, p) array -> DVS_EVENT_DTYPE, time-sorted."""
    out = np.empty(len(tonic_events), DVS_EVENT_DTYPE)
    for name in ("x", "y", "p", "t"):
        out[name] = tonic_events[name]
    if len(out) > 1 and (out["t"][1:] < out["t"][:-1]).any():
        out = take_events(out, np.argsort(out["t"], kind="stable"))
    return out


def _offline_nmnist_class(tonic):  # noqa: ANN001, ANN202 - tonic is imported lazily
    # Named NMNIST on purpose: tonic's folder is save_to/<class name>.
    class NMNIST(tonic.datasets.NMNIST):
        def _check_exists(self) -> bool:
            folder = Path(self.location_on_system, self.folder_name)
            return folder.is_dir() and next(folder.glob("**/*.bin"), None) is not None

        def download(self) -> None:
            raise InvalidArgument(
                "data",
                f"no .bin files under {Path(self.location_on_system, self.folder_name)}; "
                "chiploop never downloads, extract N-MNIST there first",
            )

    return NMNIST


class TonicNMNIST(CachedEvents):
    """``tonic.datasets.NMNIST(save_to=root, train=...)`` with the interface of
    ``chiploop.data.NMNIST`` (``events(i)``, ``labels``, ``files``, ``ds[i]``), cached in memory."""

    def __init__(self, root: str | os.PathLike, split: str = "train") -> None:
        if not tonic_available():
            raise BackendUnavailable("the tonic route needs tonic: pip install 'chiploop[tonic]'")
        import tonic  # noqa: PLC0415 - optional dependency, imported only on this route

        super().__init__()
        self.root = Path(root)
        split = check_split(split)
        folder = self.root / "NMNIST" / split.capitalize()
        if not folder.is_dir():
            raise InvalidArgument(
                "data", f"{folder} does not exist; chiploop never downloads, extract N-MNIST there first"
            )
        try:
            self._ds = _offline_nmnist_class(tonic)(save_to=str(self.root), train=split == "train")
        except (ValueError, OSError) as exc:  # tonic reads a label from each .bin's folder name
            raise InvalidArgument("data", f"tonic cannot list {folder}: {exc}") from None
        self.files = [Path(f) for f in self._ds.data]  # tonic's order: lexicographic per digit
        self.labels = np.asarray([int(t) for t in self._ds.targets], np.int64)
        if not self.files:
            raise InvalidArgument("data", f"no samples found in {folder}")
        check_every_digit(self.labels, folder)
        check_files(self.files)

    def _decode(self, index: int) -> np.ndarray:
        try:
            events = to_dvs_events(self._ds[index][0])
        except (ValueError, OSError) as exc:
            raise InvalidArgument(str(self.files[index]), f"tonic cannot decode it: {exc}") from None
        check_on_sensor(events, str(self.files[index]))
        return events
