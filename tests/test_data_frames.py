"""Binning on the readout's bins, the split, augmentation and batches."""

from __future__ import annotations

import numpy as np
import pytest
from chiploop.data import (
    NMNIST,
    Augment,
    bin_batch,
    bin_events,
    iterate_batches,
    make_batch,
    num_folds,
    readout_for,
    stratified_split,
    trim_events,
)
from chiploop.errors import InvalidArgument, NetworkRejected
from chiploop.events import make_dvs_events
from chiploop.run import Readout
from chiploop.spec import InputLayer
from conftest import DATA, needs_data


def test_bins_are_half_open_like_the_readout():
    ro = Readout(t0_us=100, bin_us=50, num_bins=3)
    ev = make_dvs_events(
        x=[0, 1, 2, 3, 4, 5, 6], y=[0] * 7, p=[1, 0, 1, 1, 0, 1, 1], t=[99, 100, 149, 150, 249, 250, 400]
    )
    frames = bin_events(ev, ro)
    assert frames.shape == (3, 2, 34, 34) and frames.dtype == np.float32
    assert frames.sum() == 4  # t=99 is before t0, t=250 and t=400 after the last bin
    assert frames[0, 0, 0, 1] == 1 and frames[0, 1, 0, 2] == 1  # t=100 (p=0), t=149 (p=1)
    assert frames[1, 1, 0, 3] == 1  # t=150 starts bin 1
    assert frames[2, 0, 0, 4] == 1  # t=249 is the last us of bin 2
    np.testing.assert_array_equal(trim_events(ev, ro)["t"], [100, 149, 150, 249])
    merged = bin_events(ev, ro, InputLayer(sensor_size=(34, 34), merge_polarities=True))
    assert merged.shape == (3, 1, 34, 34) and merged.sum() == 4


def test_a_polarity_past_1_is_refused_rather_than_counted_in_another_frame():
    ro = Readout(t0_us=0, bin_us=50, num_bins=2)
    bad = make_dvs_events(x=[5], y=[5], p=[2], t=[0])
    with pytest.raises(InvalidArgument, match=r"events\.p: polarity must be 0 or 1, got 2"):
        bin_batch([bad, make_dvs_events(x=[], y=[], p=[], t=[])], ro)
    assert bin_events(bad, ro, InputLayer(sensor_size=(34, 34), merge_polarities=True)).sum() == 1  # p plays no part


def test_an_event_outside_the_sensor_is_refused_rather_than_left_out_of_the_frames():
    ro = Readout(t0_us=0, bin_us=50, num_bins=2)
    inside = make_dvs_events(x=[1, 2], y=[3, 4], p=[0, 1], t=[0, 1])
    outside = make_dvs_events(x=[5, 100], y=[5, 5], p=[0, 0], t=[0, 1])  # a 128x128 sensor's event
    with pytest.raises(InvalidArgument, match=r"samples\[1\]\.events\[1\]: \(x=100, y=5\) is outside the 34x34 sensor"):
        bin_batch([inside, outside], ro)
    assert bin_batch([inside, outside], ro, InputLayer(sensor_size=(128, 128))).sum() == 4


@needs_data
def test_batches_bin_on_the_datasets_sensor_or_the_chips_input_stage():
    class Unsized:  # an EventDataset without its sensor_size
        def __init__(self, ds):
            self.labels, self.files, self.events, self.__len__ = ds.labels, ds.files, ds.events, ds.__len__

    ds, ro = NMNIST(DATA), readout_for(2, 320_000)
    plain = make_batch(ds, np.arange(3), ro).frames
    merged = make_batch(ds, np.arange(3), ro, input_layer=InputLayer(sensor_size=(34, 34), merge_polarities=True))
    np.testing.assert_array_equal(merged.frames[:, :, 0], plain.sum(2))
    pooled = make_batch(ds, np.arange(3), ro, input_layer=InputLayer(sensor_size=(34, 34), pool=(2, 2), crop=(1, 16, 0, 17)))
    assert pooled.frames.shape == (3, 2, 2, 15, 17)
    summed = plain.reshape(3, 2, 2, 17, 2, 17, 2).sum((4, 6))  # 2x2 sum pooling of the frames ...
    np.testing.assert_array_equal(pooled.frames, summed[:, :, :, 1:16])  # ... cropped to rows 1..15
    with pytest.raises(InvalidArgument, match="dataset: Unsized has no sensor_size"):
        make_batch(Unsized(ds), np.arange(3), ro)
    with pytest.raises(InvalidArgument, match=r"augment.sensor_size: is \(128, 128\), the data's sensor is \(34, 34\)"):
        make_batch(ds, np.arange(3), ro, augment=Augment(sensor_size=(128, 128)))
    with pytest.raises(NetworkRejected, match="pooling"):  # a stage the chip cannot have
        make_batch(ds, np.arange(3), ro, input_layer=InputLayer(sensor_size=(34, 34), pool=(3, 3)))


def test_frames_are_what_the_simulators_input_stage_passes_to_layer_0():
    rng = np.random.default_rng(4)
    n = 2000
    events = make_dvs_events(rng.integers(0, 40, n), rng.integers(0, 30, n), rng.integers(0, 2, n), np.sort(rng.integers(0, 900, n)))
    stage = InputLayer(sensor_size=(30, 40), pool=(2, 4), crop=(2, 13, 1, 9), flip_x=True, merge_polarities=False)
    ro = readout_for(3, 900)
    frames = bin_events(events, ro, stage)
    c, y, x, kept = stage.map_events(events)
    assert frames.shape == (3, *stage.out_shape) and frames.sum() == kept.sum()
    for i in np.flatnonzero(kept)[:50]:
        assert frames[int(events["t"][i]) // ro.bin_us, c[i], y[i], x[i]] >= 1


def test_batch_binning_equals_per_sample_binning():
    rng = np.random.default_rng(1)
    samples = []
    for n in (0, 10, 300):
        t = np.sort(rng.integers(0, 1000, n))
        samples.append(make_dvs_events(rng.integers(0, 34, n), rng.integers(0, 34, n), rng.integers(0, 2, n), t))
    ro = readout_for(4, 1000)
    batch = bin_batch(samples, ro)
    for i, s in enumerate(samples):
        np.testing.assert_array_equal(batch[i], bin_events(s, ro))
        assert batch[i].sum() == len(s)
    with pytest.raises(InvalidArgument, match="bins"):
        readout_for(0, 1000)


def test_split_is_stratified_and_deterministic():
    labels = np.repeat(np.arange(10), [87, 117, 100, 100, 100, 100, 100, 100, 99, 97])
    train, val = stratified_split(labels, 0.2, seed=3)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(labels)
    per_class = np.bincount(labels[val], minlength=10)
    np.testing.assert_array_equal(per_class, np.round(np.bincount(labels) * 0.2).astype(int))
    again = stratified_split(labels, 0.2, seed=3)
    np.testing.assert_array_equal(again[1], val)
    assert not np.array_equal(stratified_split(labels, 0.2, seed=4)[1], val)


@pytest.mark.parametrize(("fraction", "count"), [(0.2, 5), (0.3, 4), (0.1, 10)])
def test_folds_validate_every_sample_once_and_fold_0_is_the_plain_split(fraction, count):
    labels = np.repeat(np.arange(10), [87, 117, 100, 100, 100, 100, 100, 100, 99, 97])
    folds = [stratified_split(labels, fraction, seed=3, fold=k) for k in range(num_folds(fraction))]
    assert len(folds) == count
    everything = np.concatenate([val for _, val in folds])
    np.testing.assert_array_equal(np.sort(everything), np.arange(len(labels)))  # disjoint, and they cover all
    for train, val in folds:
        assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(labels)
    for a, b in zip(folds[0], stratified_split(labels, fraction, seed=3), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(InvalidArgument) as err:
        stratified_split(labels, fraction, seed=3, fold=num_folds(fraction))
    assert err.value.field == "fold"


def test_augment_shifts_and_drops_the_events_themselves():
    ev = make_dvs_events(x=[0, 10, 33], y=[5, 10, 20], p=[1, 1, 0], t=[1, 2, 3])
    shifted = Augment(max_shift=2, drop=0.0)(ev, np.random.default_rng(0))
    dy, dx = np.random.default_rng(0).integers(-2, 3, size=2)
    keep = (ev["x"].astype(int) + dx >= 0) & (ev["x"].astype(int) + dx < 34)
    np.testing.assert_array_equal(shifted["x"], ev["x"][keep] + dx)
    np.testing.assert_array_equal(shifted["y"], ev["y"][keep] + dy)
    many = make_dvs_events(np.zeros(10_000), np.zeros(10_000), np.ones(10_000), np.arange(10_000))
    dropped = Augment(max_shift=0, drop=0.25)(many, np.random.default_rng(0))
    assert 7300 < len(dropped) < 7700 and np.all(np.diff(dropped["t"]) > 0)


@needs_data
def test_batches_carry_the_same_events_to_chip_and_frames():
    ds = NMNIST(DATA)
    ro = readout_for(5, 320_000)
    idx = np.arange(10)
    batches = list(iterate_batches(ds, idx, ro, batch_size=4, shuffle=True, seed=0, augment=Augment()))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate([b.indices for b in batches])) == list(idx)
    for b in batches:
        np.testing.assert_array_equal(b.frames, bin_batch(b.events, ro))
        np.testing.assert_array_equal(b.labels, ds.labels[b.indices])
    again = list(iterate_batches(ds, idx, ro, batch_size=4, shuffle=True, seed=0, augment=Augment()))
    np.testing.assert_array_equal(again[0].frames, batches[0].frames)
