"""The tonic route: tonic's own NMNIST class reads a tonic folder, chiploop never lets it download."""

from __future__ import annotations

import json

import numpy as np
import pytest
from chiploop.data import NMNIST
from chiploop.data.tonic_source import TonicNMNIST, to_dvs_events, tonic_available
from chiploop.errors import BackendUnavailable, InvalidArgument
from conftest import DATA, needs_data

needs_tonic = pytest.mark.skipif(not tonic_available(), reason="tonic is not installed")


def tonic_folder(root, per_split: int = 30):
    """tonic's layout (``NMNIST/Train/<digit>/<id>.bin``, ``Test``) linking to bundled samples.

    Only the extracted folders, no archives and far fewer than 10,000 files:
    tonic's own check would call that missing and download.
    """
    bundled = NMNIST(DATA)
    for split, indices in (("Train", range(per_split)), ("Test", range(per_split, 2 * per_split))):
        for i in indices:
            folder = root / "NMNIST" / split / str(int(bundled.labels[i]))
            folder.mkdir(parents=True, exist_ok=True)
            (folder / bundled.files[i].name).symlink_to(bundled.files[i])
    return bundled


def test_tonic_events_convert_to_time_sorted_dvs_events():
    tonic_dtype = np.dtype([("x", "<i8"), ("y", "<i8"), ("t", "<i8"), ("p", "<i8")])
    raw = np.array([(3, 4, 20, 1), (5, 6, 10, 0)], dtype=tonic_dtype)
    ev = to_dvs_events(raw)
    np.testing.assert_array_equal(ev["t"], [10, 20])
    np.testing.assert_array_equal(ev["x"], [5, 3])


@pytest.mark.skipif(tonic_available(), reason="tonic is installed")
def test_without_tonic_the_route_says_what_to_install(tmp_path):
    with pytest.raises(BackendUnavailable, match="tonic"):
        TonicNMNIST(tmp_path)


def test_the_tonic_route_needs_a_data_folder():
    from chiploop.training.config import TrainConfig  # noqa: PLC0415 - torch only for this test
    from chiploop.training.trainer import load_dataset  # noqa: PLC0415

    with pytest.raises(InvalidArgument, match="needs --data"):
        load_dataset(TrainConfig(tonic=True))


@needs_tonic
def test_missing_folder_is_refused_before_tonic_runs(tmp_path):
    with pytest.raises(InvalidArgument, match="never downloads"):
        TonicNMNIST(tmp_path)
    (tmp_path / "NMNIST" / "Train").mkdir(parents=True)  # extracted folder, but empty
    with pytest.raises(InvalidArgument, match="never downloads"):
        TonicNMNIST(tmp_path)
    with pytest.raises(InvalidArgument, match="split: must be one of train, test, got 'val'"):
        TonicNMNIST(tmp_path, split="val")  # not the test split under another name


@needs_tonic
@needs_data
def test_tonic_reads_the_same_samples_as_chiploop(tmp_path):
    tonic_folder(tmp_path)
    for split in ("train", "test"):
        via_tonic = TonicNMNIST(tmp_path, split=split)
        direct = NMNIST(tmp_path / "NMNIST", split=split)  # chiploop's reader, full layout
        assert len(via_tonic) == len(direct) == 30
        position = {f.name: i for i, f in enumerate(direct.files)}  # tonic sorts names as text
        for i, f in enumerate(via_tonic.files):
            j = position[f.name]
            assert via_tonic.labels[i] == direct.labels[j]
            np.testing.assert_array_equal(via_tonic.events(i), direct.events(j))
        with pytest.raises(IndexError):
            via_tonic.events(len(via_tonic))  # refused as chiploop's reader does, not wrapped around


@needs_tonic
@needs_data
def test_train_and_eval_through_tonic(tmp_path, daemon, capsys):
    from chiploop.training.cli import main  # noqa: PLC0415 - torch only for this test

    tonic_folder(tmp_path / "data")
    out = tmp_path / "run"
    common = ["--tonic", "--data", str(tmp_path / "data"), "--chip", daemon.address]
    tiny = ["--width", "0.25", "--bins", "3", "--batch-size", "16", "--quiet"]
    assert main(["train", "--method", "bptt", "--epochs", "1", "--out", str(out), *common, *tiny]) == 0
    capsys.readouterr()
    ckpt = str(out / "checkpoint.pt")
    assert main(["eval", ckpt, "--split", "test", "--chip", daemon.address, "--json"]) == 0  # tonic, as trained
    via_tonic = json.loads(capsys.readouterr().out)
    assert via_tonic["n"] == 30 and 0.0 <= via_tonic["chip"] <= 1.0
    direct = ["--data", str(tmp_path / "data" / "NMNIST"), "--no-tonic"]
    assert main(["eval", ckpt, "--split", "test", "--chip", daemon.address, *direct, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("n", "sync_int", "chip"):  # the same samples (in another order), the same accuracies
        assert report[key] == pytest.approx(via_tonic[key])
