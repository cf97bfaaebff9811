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
    per_digit = per_split // 10  # every digit in both splits, as in N-MNIST
    by_digit = [np.flatnonzero(bundled.labels == d) for d in range(10)]
    train = np.sort(np.concatenate([ix[:per_digit] for ix in by_digit]))
    test = np.sort(np.concatenate([ix[per_digit : 2 * per_digit] for ix in by_digit]))
    for split, indices in (("Train", train), ("Test", test)):
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
def test_tonic_route_refuses_bad_files_when_it_opens_naming_them(tmp_path):
    tonic_folder(tmp_path)
    train = tmp_path / "NMNIST" / "Train"
    (train / "3" / "odd.bin").write_bytes(b"\x00" * 7)
    with pytest.raises(InvalidArgument, match=r"3/odd\.bin: size 7 bytes is not a multiple of 5"):
        TonicNMNIST(tmp_path)
    (train / "3" / "odd.bin").unlink()
    (train / "README.bin").write_bytes(b"")  # tonic takes a label from the folder's name
    with pytest.raises(InvalidArgument, match="^data: tonic cannot list"):
        TonicNMNIST(tmp_path)
    (train / "README.bin").unlink()
    for f in (train / "8").iterdir():
        f.unlink()
    with pytest.raises(InvalidArgument, match=r"no samples of digit\(s\) 8"):
        TonicNMNIST(tmp_path)


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
