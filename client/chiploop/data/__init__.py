"""N-MNIST data: the reader, datasets, binning into frames, splits, augmentation and batches."""

from chiploop.data.augment import Augment
from chiploop.data.frames import bin_batch, bin_events, readout_for, trim_events
from chiploop.data.loader import Batch, iterate_batches, make_batch
from chiploop.data.nmnist import (
    NMNIST,
    NMNIST_SENSOR_SIZE,
    default_data_dir,
    read_nmnist_bin,
)
from chiploop.data.split import num_folds, stratified_split

__all__ = [
    "NMNIST",
    "NMNIST_SENSOR_SIZE",
    "Augment",
    "Batch",
    "bin_batch",
    "bin_events",
    "default_data_dir",
    "iterate_batches",
    "make_batch",
    "read_nmnist_bin",
    "readout_for",
    "num_folds",
    "stratified_split",
    "trim_events",
]
