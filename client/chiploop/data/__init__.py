"""N-MNIST data: the reader, datasets, binning into frames, splits and augmentation."""

from chiploop.data.nmnist import (
    NMNIST,
    NMNIST_SENSOR_SIZE,
    default_data_dir,
    read_nmnist_bin,
)

__all__ = ["NMNIST", "NMNIST_SENSOR_SIZE", "default_data_dir", "read_nmnist_bin"]
