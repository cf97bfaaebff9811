"""The N-MNIST reader and dataset, against the bundled real recordings."""

from __future__ import annotations

import io

import numpy as np
import pytest
from chiploop.data import NMNIST, read_nmnist_bin
from chiploop.data.nmnist import decode_nmnist_bytes
from chiploop.errors import InvalidArgument
from chiploop.events import DVS_EVENT_DTYPE, check_dvs_events
from conftest import DATA, needs_data

pytestmark = needs_data


def encode(x, y, p, t) -> bytes:
    """The 40-bit encoding, written independently of the reader (per-event, the slow obvious way)."""
    out = bytearray()
    for xi, yi, pi, ti in zip(x, y, p, t, strict=True):
        out += bytes([xi, yi, (pi << 7) | (ti >> 16), (ti >> 8) & 0xFF, ti & 0xFF])
    return bytes(out)


def test_decode_matches_an_independent_encoder():
    rng = np.random.default_rng(0)
    n = 500
    x, y, p = rng.integers(0, 34, n), rng.integers(0, 34, n), rng.integers(0, 2, n)
    t = np.sort(rng.integers(0, 1 << 23, n))
    ev = decode_nmnist_bytes(encode(x, y, p, t))
    assert ev.dtype == DVS_EVENT_DTYPE
    np.testing.assert_array_equal(ev["x"], x)
    np.testing.assert_array_equal(ev["y"], y)
    np.testing.assert_array_equal(ev["p"], p)
    np.testing.assert_array_equal(ev["t"], t)


def test_bundled_file_reads_as_valid_events():
    ev = read_nmnist_bin(DATA / "train" / "1.bin")
    assert ev.dtype == DVS_EVENT_DTYPE
    assert (DATA / "train" / "1.bin").stat().st_size == 5 * len(ev)
    check_dvs_events(ev, (34, 34))
    assert 1100 <= len(ev) <= 7200
    assert 250_000 < ev["t"].max() < 320_000  # three saccades, ~300 ms
    assert set(np.unique(ev["p"])) == {0, 1}


def test_bundled_dataset_counts_ranges_and_labels():
    ds = NMNIST(DATA)
    assert len(ds) == 1000
    counts = np.bincount(ds.labels, minlength=10)
    assert counts.sum() == 1000 and counts.min() >= 87 and counts.max() <= 117
    lengths = np.array([len(ds.events(i)) for i in range(0, 1000, 50)])
    assert lengths.min() >= 1100 and lengths.max() <= 7200
    ev, label = ds[0]
    assert label == 5 and ds.ids[0] == "1"  # labels.csv: 1.bin,5 (N-MNIST train sample 1 is a 5)
    assert ds.events(0) is ev  # cached
    with pytest.raises(ValueError):
        ev["x"][0] = 1  # the cache is read-only


def test_cache_stops_filling_at_its_limit_and_reads_stay_the_same(monkeypatch):
    full = NMNIST(DATA)
    small = NMNIST(DATA, cache_gb=40_000 / 2**30)  # room for a few samples of ~50 kB
    for i in range(20):
        np.testing.assert_array_equal(small.events(i), full.events(i))
    assert 0 < small.cached_bytes <= 40_000 and len(small._cache) < 20
    kept = next(iter(small._cache))
    dropped = next(i for i in range(20) if i not in small._cache)
    assert small.events(kept) is small.events(kept) and small.events(dropped) is not small.events(dropped)
    assert not small.events(dropped).flags.writeable  # uncached samples are read-only too
    monkeypatch.setenv("CHIPLOOP_CACHE_GB", "0")
    assert NMNIST(DATA).cache_limit_bytes == 0
    monkeypatch.setenv("CHIPLOOP_CACHE_GB", "lots")
    with pytest.raises(InvalidArgument, match="CHIPLOOP_CACHE_GB"):
        NMNIST(DATA)


def test_full_layout_and_bad_files(tmp_path):
    for digit in range(10):
        d = tmp_path / "Train" / str(digit)
        d.mkdir(parents=True)
        (d / "00002.bin").write_bytes(encode([1], [2], [1], [digit]))
        if digit in (3, 7):
            (d / "00010.BIN").write_bytes(encode([4], [5], [0], [digit + 1]))  # any case of the suffix
    ds = NMNIST(tmp_path, split="train")
    assert list(ds.labels) == [0, 1, 2, 3, 3, 4, 5, 6, 7, 7, 8, 9]
    assert ds[8][0]["t"][0] == 7
    (tmp_path / "bad.bin").write_bytes(b"\x00" * 7)
    with pytest.raises(InvalidArgument, match="multiple of 5"):
        read_nmnist_bin(tmp_path / "bad.bin")
    (tmp_path / "far.bin").write_bytes(encode([40], [2], [1], [0]))
    with pytest.raises(InvalidArgument, match=r"\.x"):
        read_nmnist_bin(tmp_path / "far.bin")
    with pytest.raises(InvalidArgument, match="no N-MNIST data"):
        NMNIST(tmp_path, split="test")
    # A split folder is itself only for its own split: the test split of Train/ is not Train/.
    assert list(NMNIST(tmp_path / "Train", split="train").labels) == list(ds.labels)
    with pytest.raises(InvalidArgument, match="no N-MNIST data"):
        NMNIST(tmp_path / "Train", split="test")
    assert list(NMNIST(tmp_path, split="Train").labels) == list(ds.labels)  # split names in any case
    with pytest.raises(InvalidArgument, match="split: must be one of train, test, got 'val'"):
        NMNIST(tmp_path, split="val")


def test_files_that_could_not_be_read_later_are_refused_when_the_data_set_opens(tmp_path):
    """Found only when first read, a bad file would end a run after an epoch of training."""
    train = tmp_path / "Train"
    for digit in range(10):
        (train / str(digit)).mkdir(parents=True)
        (train / str(digit) / "1.bin").write_bytes(encode([1], [2], [1], [digit]))
    cases = [
        (lambda: (train / "4" / "2.bin").write_bytes(b"\x00" * 7), r"4/2\.bin: size 7 bytes is not a multiple of 5"),
        (lambda: (train / "4" / "2.bin").mkdir(), r"4/2\.bin: is not a file"),
        (lambda: (train / "4" / "2.bin").symlink_to(train / "4" / "2.bin"), r"4/2\.bin: cannot read"),
        (lambda: (train / "4" / "1.bin").unlink(), "no samples of digit\\(s\\) 4 under .*incomplete copy"),
    ]
    for make, match in cases:
        make()
        with pytest.raises(InvalidArgument, match=match):
            NMNIST(tmp_path, split="train")
        for leftover in (train / "4").iterdir():
            leftover.rmdir() if leftover.is_dir() and not leftover.is_symlink() else leftover.unlink()
        (train / "4" / "1.bin").write_bytes(encode([1], [2], [1], [4]))
    assert len(NMNIST(tmp_path, split="train")) == 10


def test_timestamp_overflow_markers_extend_time_like_the_authors_reader():
    # y = 240 marks a timestamp overflow: 2**13 us more from there on (Read_Ndataset.m).
    raw = encode([1, 0, 2, 0, 3], [1, 240, 2, 240, 3], [0, 0, 1, 0, 1], [5, 0, 7, 0, 9])
    ev = decode_nmnist_bytes(raw)
    np.testing.assert_array_equal(ev["x"], [1, 2, 3])
    np.testing.assert_array_equal(ev["t"], [5, 7 + 8192, 9 + 2 * 8192])
    tonic_io = pytest.importorskip("tonic.io")
    tonic_dtype = np.dtype([("x", int), ("y", int), ("t", int), ("p", int)])
    xytp = tonic_io.read_mnist_file(io.BytesIO(raw), tonic_dtype, is_stream=True)
    np.testing.assert_array_equal(xytp["t"], ev["t"])


def test_labels_csv_names_files_with_or_without_their_suffix_in_any_case(tmp_path):
    (tmp_path / "1.BIN").write_bytes(encode([1], [2], [1], [5]))
    (tmp_path / "2.bin").write_bytes(encode([1], [2], [1], [6]))
    (tmp_path / "labels.csv").write_text("sample,label\n1.BIN,5\n2,0\n")
    ds = NMNIST(tmp_path)
    assert [f.name for f in ds.files] == ["1.BIN", "2.bin"] and list(ds.labels) == [5, 0]
