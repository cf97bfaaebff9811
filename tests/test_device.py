"""Where torch trains: device names are checked, and training on a GPU (when there is one) works end to end."""

from __future__ import annotations

import pytest
import torch
from chiploop.errors import InvalidArgument
from chiploop.training.config import TrainConfig
from chiploop.training.device import resolve_device
from chiploop.training.trainer import train
from conftest import needs_data

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def test_auto_picks_a_gpu_only_when_torch_sees_one():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu0", "tpu", "mps", "cuda:99"] + ([] if torch.cuda.is_available() else ["cuda"]))
def test_unusable_devices_are_refused_by_name(name):
    with pytest.raises(InvalidArgument) as err:
        resolve_device(name)
    assert err.value.field == "device" and name in str(err.value)


def test_the_cli_refuses_a_missing_gpu_before_training(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    from chiploop.cli import main  # noqa: PLC0415

    assert main(["train", "--device", "cuda", "--out", str(tmp_path / "run"), "--chip", "inprocess", "--quiet"]) != 0
    assert "device" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("entry", ["train", "experiment", "cross-validation"])
def test_an_unusable_device_is_refused_before_any_chip_is_opened(entry, tmp_path):
    """The data folder is missing as well: a run that started its local daemon (no --chip)
    before it looked at the device would stop at the data instead, a daemon start later."""
    from chiploop.training.experiment import run_cv, run_experiment  # noqa: PLC0415

    cfg = TrainConfig(device="tpu", data=str(tmp_path / "missing"), out=str(tmp_path))
    run = {
        "train": lambda: train(cfg),
        "experiment": lambda: run_experiment(cfg, ["bptt"]),
        "cross-validation": lambda: run_cv(cfg, ["bptt"], [0]),
    }[entry]
    with pytest.raises(InvalidArgument) as err:
        run()
    assert err.value.field == "device"


@pytest.mark.gpu
@needs_cuda
@needs_data
def test_cil_bptt_trains_on_the_gpu_against_the_daemon(tmp_path, daemon):
    cfg = TrainConfig(method="cil-bptt", device="cuda", epochs=2, out=str(tmp_path / "run"), chip=(daemon.address,),
                      width=0.25, bins=3, batch_size=32, max_train=96, max_val=40, calibration_samples=32,
                      progress=False)  # fmt: skip
    result = train(cfg)
    assert result.history[1]["train_loss"] < result.history[0]["train_loss"]
    assert 0.0 <= result.final.chip <= 1.0
