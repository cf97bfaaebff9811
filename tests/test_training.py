"""The training loop, checkpoints and resume, the CLI and the experiment, end to end on tiny runs."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from chiploop.data.nmnist import default_data_dir
from chiploop.errors import InvalidArgument
from chiploop.training.cli import checkpoints_written, main
from chiploop.training.config import HIDDEN_LAYERS, TrainConfig
from chiploop.training.evaluate import EvalResult, paired_margin
from chiploop.training.experiment import (
    check_plan,
    covers_every_sample,
    plan,
    run_cv,
    run_experiment,
    run_folds,
    run_seeds,
)
from chiploop.training.trainer import (
    RunStopped,
    _initial_model,
    calibration_indices,
    load_checkpoint,
    split_indices,
    train,
    training_into,
)
from conftest import needs_data

pytestmark = needs_data

#: On the CPU even where a GPU is: runs are compared exactly (tests/test_device.py covers CUDA).
TINY = dict(width=0.25, bins=3, batch_size=32, max_train=64, max_val=40, calibration_samples=32, progress=False,
            device="cpu")  # fmt: skip


def tiny_cli_args(daemon, max_val: int, *extra: str) -> list[str]:
    """``chiploop train`` flags for a quick run against ``daemon``."""
    return ["--chip", daemon.address, "--width", "0.25", "--bins", "3", "--batch-size", "32", "--max-train", "32",
            "--max-val", str(max_val), "--device", "cpu", "--quiet", *extra]  # fmt: skip


def test_train_writes_everything_and_resumes(tmp_path, daemon):
    torch.manual_seed(0)
    cfg = TrainConfig(method="cil-bptt", epochs=1, out=str(tmp_path / "run"), chip=(daemon.address,), **TINY)
    first = train(cfg)
    for name in ("checkpoint.pt", "config.json", "metrics.csv", "summary.json", "accuracy.png", "weights.png"):
        assert (first.out / name).is_file(), name
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(first.out / "tb"))
    board.Reload()
    assert {"val_chip", "train_loss", "iteration/train_loss", "iteration/chip_wait_s"} <= set(board.Tags()["scalars"])
    assert [e.step for e in board.Scalars("iteration/train_loss")] == [1, 2]  # one point per batch
    assert first.final.chip is not None and 0.0 <= first.final.chip <= 1.0
    cfg.epochs, cfg.resume = 2, True
    second = train(cfg)
    assert [h["epoch"] for h in second.history] == [0, 1]
    assert second.history[0] == first.history[0]  # the first epoch is kept, not redone
    rows = list(csv.DictReader(open(second.out / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert load_checkpoint(second.out / "checkpoint.pt")["epoch"] == 1
    with pytest.raises(InvalidArgument, match="width"):
        train(replace(cfg, width=0.5, epochs=3))  # a checkpoint of another network is not resumed
    with pytest.raises(InvalidArgument, match=r"substitute_hidden: is \(\) but .* trained with \(0, 1, 2, 3, 4\)"):
        train(replace(cfg, substitute_hidden=(), epochs=3))  # nor one trained with another substitution
    with pytest.raises(InvalidArgument, match="lr: is 0.002 but"):
        train(replace(cfg, lr=2e-3, epochs=3))  # nor with another learning rate
    with pytest.raises(InvalidArgument, match=r"data: .* holds 500 samples, .* trained on 1000 samples"):
        train(replace(cfg, data=str(samples_folder(tmp_path / "half", 500)), epochs=3))  # nor on other samples


def test_a_run_its_time_limit_stopped_is_finished_and_resuming_it_only_measures(tmp_path, daemon):
    """experiment --budget gives each method a time limit; experiment --resume rebuilds the tables
    from the runs there, so a run the limit stopped must not train on when resumed, and its
    reported time is the training's, not the measurement's."""
    cfg = TrainConfig(method="bptt", epochs=3, out=str(tmp_path / "run"), chip=(daemon.address,),
                      time_limit_s=1e-3, resume=True, **TINY)  # fmt: skip
    first = train(cfg)
    assert [h["epoch"] for h in first.history] == [0]  # stopped after the epoch that passed the limit
    again = train(cfg)
    assert again.history == first.history and again.final.chip == first.final.chip
    assert 0 < again.seconds <= first.seconds
    longer = train(replace(cfg, time_limit_s=None))  # a larger budget trains on
    assert [h["epoch"] for h in longer.history] == [0, 1, 2]
    assert longer.seconds > first.seconds


def samples_folder(folder, n: int):
    """A folder of the first ``n`` bundled samples with labels.csv at its root (links to the files)."""
    bundled = default_data_dir() / "train"
    rows = (bundled / "labels.csv").read_text().splitlines()
    folder.mkdir()
    (folder / "labels.csv").write_text("\n".join(rows[: n + 1]) + "\n")
    for row in rows[1 : n + 1]:
        name = row.split(",")[0].strip()
        name = name if name.endswith(".bin") else f"{name}.bin"
        (folder / name).symlink_to(bundled / name)
    return folder


def test_a_sample_that_cannot_be_decoded_keeps_the_epoch_trained_before_it(tmp_path, daemon):
    """Its size is right (so the data set opens), its first event is off the sensor: found while
    validating, after the epoch trained. The epoch is checkpointed; fixed, the run resumes there."""
    data = tmp_path / "data"
    data.mkdir()
    bundled = default_data_dir() / "train"
    rows = (bundled / "labels.csv").read_text().splitlines()
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    for row in rows[1:]:
        name = row.split(",")[0]
        (data / name).symlink_to(bundled / name)
    cfg = TrainConfig(method="bptt", epochs=1, data=str(data), out=str(tmp_path / "run"), chip=(daemon.address,), **TINY)
    labels = np.array([int(r.split(",")[1]) for r in rows[1:]])
    victim = data / rows[1 + int(split_indices(cfg.check(), labels)[1][0])].split(",")[0]
    raw = bytearray(victim.read_bytes())
    raw[0] = 200  # x of the first event
    victim.unlink()
    victim.write_bytes(bytes(raw))
    with pytest.raises(InvalidArgument, match=rf"{victim.name}\[0\]\.x: must be < 34"):
        train(cfg)
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert saved["epoch"] == -1 and saved["in_epoch"]["batches"] == 2  # every batch of the epoch trained
    victim.unlink()
    victim.symlink_to(bundled / victim.name)
    result = train(replace(cfg, resume=True))
    assert len(result.history) == 1 and result.history[0]["iterations"] == 2


def test_calibration_draws_every_class_from_a_data_set_listed_digit_by_digit():
    train = np.arange(6000)  # the full data set's order: all zeros first, then all ones, ...
    labels = np.repeat(np.arange(10), 600)
    picked = calibration_indices(TrainConfig(calibration_samples=256), train)
    assert len(picked) == 256 and len(set(picked)) == 256
    assert np.bincount(labels[picked], minlength=10).min() >= 10


def visible_steps(folder, tag: str) -> list[int]:
    """The steps of ``tag`` TensorBoard shows from the sessions' event files in ``folder``: a session
    opened with purge_step S hides what earlier ones wrote at S and after. (EventAccumulator orders
    the files by name, which for sessions of one process within one second is not their order.)"""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps: list[int] = []
    for path in sorted(folder.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns):
        for event in EventFileLoader(str(path)).Load():
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                steps = [s for s in steps if s < event.step]
            elif event.HasField("summary") and any(v.tag == tag for v in event.summary.value):
                steps.append(event.step)
    return steps


@pytest.mark.parametrize("method", ["cil-bptt", "cil-ann"])
def test_a_run_stopped_inside_an_epoch_resumes_to_the_model_of_a_run_never_stopped(tmp_path, daemon, method):
    """A stop (what SIGTERM and Ctrl-C do in the CLI) checkpoints after the batch in progress;
    resumed from there, twice, the run trains exactly what an unstopped run does: the same
    batches, augmentation, scales, conversion and chip network."""
    base = TrainConfig(method=method, epochs=2, chip=(daemon.address,), augment=True, **{**TINY, "max_train": 96})
    whole = train(replace(base, out=str(tmp_path / "whole")))
    cfg = replace(base, out=str(tmp_path / "stopped"), resume=True)
    stop = threading.Event()
    stop.set()
    with pytest.raises(RunStopped, match=r"after batch 1 of 3 in epoch 1; .*run again with --resume"):
        train(cfg, stop=stop)
    with pytest.raises(RunStopped, match=r"after batch 2 of 3 in epoch 1"):
        train(cfg, stop=stop)  # resumed inside the epoch, then stopped again
    saved = load_checkpoint(tmp_path / "stopped" / "checkpoint.pt")
    assert (saved["epoch"], saved["in_epoch"]["batches"], saved["history"]) == (-1, 2, [])
    resumed = train(cfg)
    timings = ("epoch_s", "chip_wait_s")
    for row_whole, row_resumed in zip(whole.history, resumed.history, strict=True):
        assert {k: v for k, v in row_whole.items() if k not in timings} == {
            k: v for k, v in row_resumed.items() if k not in timings
        }
    states = [load_checkpoint(tmp_path / run / "checkpoint.pt")["method"]["model"] for run in ("whole", "stopped")]
    for name, tensor in states[0].items():
        assert torch.equal(tensor, states[1][name]), name
    assert load_checkpoint(tmp_path / "stopped" / "checkpoint.pt")["in_epoch"] is None
    assert visible_steps(tmp_path / "stopped" / "tb", "iteration/train_loss") == list(range(1, 7))
    # A finished run resumed rewrites its metrics from the checkpoint (a crash or a user cut the file).
    (tmp_path / "stopped" / "metrics.csv").write_text("epoch,train_lo")
    train(cfg)
    assert [r["epoch"] for r in csv.DictReader(open(tmp_path / "stopped" / "metrics.csv"))] == ["0", "1"]


def test_a_checkpoint_that_cannot_be_written_ends_the_run_in_one_line_and_leaves_nothing_half_written(
    tmp_path, daemon, capsys
):
    """A full disk gave two tracebacks (the failure handler saved again), and the partial file kept
    the disk full for the resume. Here the write fails because its temporary name is a folder."""
    from chiploop.cli import main

    out = tmp_path / "run"
    args = ["train", *tiny_cli_args(daemon, 16), "--method", "bptt", "--out", str(out)]
    (out / "checkpoint.tmp").mkdir(parents=True)  # the first checkpoint fails: no records are left without one
    assert main([*args, "--epochs", "1"]) == 1
    assert "none was written yet: make room, then run the same command again" in capsys.readouterr().err
    assert not (out / "metrics.csv").exists() and not (out / "checkpoint.pt").exists()
    (out / "checkpoint.tmp").rmdir()
    assert main([*args, "--epochs", "1"]) == 0  # the same command, as it said
    (out / "checkpoint.tmp").mkdir()
    assert main([*args, "--epochs", "2", "--resume"]) == 1
    err = capsys.readouterr().err
    assert "CheckpointNotWritten: cannot write the checkpoint" in err and "the last one written stands" in err, err
    assert "Traceback" not in err
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 0  # the last one stands
    (out / "checkpoint.tmp").rmdir()
    assert main([*args, "--epochs", "2", "--resume"]) == 0
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1


def test_sigterm_stops_chiploop_train_after_a_batch_with_a_checkpoint(tmp_path, daemon):
    out = tmp_path / "preempted"
    command = [sys.executable, "-m", "chiploop.training.cli", "train", "--method", "bptt", "--epochs", "200",
               "--out", str(out), *tiny_cli_args(daemon, 8), "--threads", "1"]  # fmt: skip
    trainer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "config.json").exists():  # written after the handlers are in place
        assert trainer.poll() is None and time.monotonic() < deadline, trainer.communicate()
        time.sleep(0.02)
    trainer.send_signal(signal.SIGTERM)
    _, err = trainer.communicate(timeout=120)
    assert trainer.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM: stopping after the batch in progress" in err
    assert "run again with --resume to continue" in err
    saved = load_checkpoint(out / "checkpoint.pt")
    assert saved["in_epoch"] is not None or saved["epoch"] >= 0
    assert saved["epoch"] < 199  # it stopped, not finished


def test_cnn_exports_its_trained_weights_unclipped_and_a_checkpoint_stopped_mid_epoch_evaluates(tmp_path, daemon):
    # Trained in float, the ANN's weights outgrow the grid of the epoch's start; export recalibrates.
    cfg = TrainConfig(method="cnn", epochs=1, lr=3e-3, out=str(tmp_path / "cnn"), chip=(daemon.address,), **TINY)
    train(cfg)
    model = load_checkpoint(tmp_path / "cnn" / "checkpoint.pt")["method"]["model"]
    for i, scale in enumerate(model["scale"]):
        assert model[f"convs.{i}.weight"].abs().max() / scale <= 127.0 + 1e-3
    # Stopped inside its first epoch, before any conversion: eval converts as the epoch's end would.
    stop = threading.Event()
    stop.set()
    with pytest.raises(RunStopped):
        train(replace(cfg, out=str(tmp_path / "stopped"), resume=True), stop=stop)
    assert main(["eval", str(tmp_path / "stopped" / "checkpoint.pt"), "--chip", daemon.address, "--json"]) == 0


def test_eval_refuses_a_test_split_that_is_the_training_folder(tmp_path, daemon, capsys):
    data = samples_folder(tmp_path / "mine", 200)  # labels.csv at the root: every split of itself
    out = tmp_path / "run"
    assert main(["train", "--method", "bptt", "--epochs", "1", "--data", str(data), "--out", str(out),
                 *tiny_cli_args(daemon, 20)]) == 0  # fmt: skip
    with pytest.raises(InvalidArgument, match="the samples .* was trained on; pass --data with held-out samples"):
        main(["eval", str(out / "checkpoint.pt"), "--split", "test", "--chip", daemon.address])
    held_out = samples_folder(tmp_path / "held_out", 30)
    capsys.readouterr()
    assert main(["eval", str(out / "checkpoint.pt"), "--split", "test", "--data", str(held_out),
                 "--chip", daemon.address, "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["n"] == 30


def test_cli_train_then_eval(tmp_path, daemon, capsys):
    out = tmp_path / "cli"
    args = tiny_cli_args(daemon, 30)
    assert main(["train", "--method", "bptt", "--epochs", "1", "--out", str(out), *args]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert main(["eval", str(out / "checkpoint.pt"), "--chip", daemon.address, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 30 and report["method"] == "bptt"
    # eval reproduces the run's own final validation numbers (same split, same integer network).
    for key in ("software", "sync_int", "chip"):
        assert report[key] == pytest.approx(trained[key])

    # Several checkpoints: each against the first, paired on the same samples.
    other = tmp_path / "cli_lr"
    assert main(["train", "--method", "bptt", "--epochs", "1", "--lr", "3e-3", "--out", str(other), *args]) == 0
    second = json.loads(capsys.readouterr().out)
    assert main(["eval", str(out / "checkpoint.pt"), str(other / "checkpoint.pt"), "--chip", daemon.address, "--json"]) == 0
    compared = json.loads(capsys.readouterr().out)
    assert [c["chip"] for c in compared["checkpoints"]] == pytest.approx([trained["chip"], second["chip"]])
    (pair,) = compared["paired"]
    assert pair["samples"] == 30 and pair["margin"] == pytest.approx(100 * (second["chip"] - trained["chip"]))
    assert pair["only_model_right"] - pair["only_baseline_right"] == round(30 * (second["chip"] - trained["chip"]))
    elsewhere = tmp_path / "cli_seed"
    assert main(["train", "--method", "bptt", "--epochs", "1", "--seed", "1", "--out", str(elsewhere), *args]) == 0
    capsys.readouterr()
    with pytest.raises(InvalidArgument, match="same samples"):
        main(["eval", str(out / "checkpoint.pt"), str(elsewhere / "checkpoint.pt"), "--chip", daemon.address])

    # Another data set's validation split is not held out from this run.
    half = tmp_path / "half"
    half.mkdir()
    rows = (default_data_dir() / "train" / "labels.csv").read_text().splitlines()[:501]
    (half / "labels.csv").write_text("\n".join(rows) + "\n")
    for row in rows[1:]:
        name = row.split(",")[0]
        (half / name).symlink_to(default_data_dir() / "train" / name)
    with pytest.raises(InvalidArgument, match="holds 500 samples.*was trained on 1000 samples.*--split test"):
        main(["eval", str(out / "checkpoint.pt"), "--data", str(half), "--chip", daemon.address])
    with pytest.raises(InvalidArgument, match="threads: must be 1"):
        main(["eval", str(out / "checkpoint.pt"), "--threads", "0"])

    # A second run into the same folder: refused, unless it replaces the first.
    with pytest.raises(InvalidArgument, match="holds a run already"):
        main(["train", "--method", "bptt", "--epochs", "1", "--out", str(out), *args])
    assert main(["train", "--method", "cil-bptt", "--epochs", "1", "--out", str(out), "--overwrite", *args]) == 0
    capsys.readouterr()
    assert load_checkpoint(out / "checkpoint.pt")["config"]["method"] == "cil-bptt"
    assert len(list((out / "tb").glob("events.*"))) == 1  # the replaced run's curves went with it


def test_experiment_writes_table1(tmp_path, daemon):
    base = TrainConfig(out=str(tmp_path / "exp"), chip=(daemon.address,), resume=True, **TINY)
    base.extra["epochs"] = {"cnn": 1, "bptt": 1}
    stop = threading.Event()
    stop.set()  # a Ctrl-C: the method in progress stops after its batch, checkpointed
    with pytest.raises(RunStopped, match="after batch 1 of 2 in epoch 1"):
        run_experiment(base, ["cnn", "bptt"], budget_min=5, stop=stop)
    assert load_checkpoint(tmp_path / "exp" / "cnn" / "checkpoint.pt")["in_epoch"]["batches"] == 1
    results = run_experiment(base, ["cnn", "bptt"], budget_min=5)  # --resume
    assert results["cnn"].history[0]["iterations"] == 2
    assert set(results) == {"cnn", "bptt"}
    table = (tmp_path / "exp" / "table1.md").read_text()
    assert "| cnn |" in table and "| bptt |" in table and "degradation" in table
    for name in ("table1.png", "chip_accuracy.png", "weights_by_method.png", "results.json", "table1.csv"):
        assert (tmp_path / "exp" / name).is_file(), name


def test_experiment_over_seeds_reports_means_and_cil_margins(tmp_path, daemon):
    base = TrainConfig(out=str(tmp_path / "seeds"), chip=(daemon.address,), **TINY)
    base.extra["epochs"] = {"bptt": 1, "cil-bptt": 1}
    by_seed = run_seeds(base, ["bptt", "cil-bptt"], [0, 1], budget_min=5)
    assert list(by_seed) == [0, 1]
    assert (tmp_path / "seeds" / "seed1" / "cil-bptt" / "checkpoint.pt").is_file()
    report = json.loads((tmp_path / "seeds" / "seeds.json").read_text())
    chip = report["percent"]
    expected = [100 * (by_seed[s]["cil-bptt"].final.chip - by_seed[s]["bptt"].final.chip) for s in (0, 1)]
    assert report["chip_margins"]["cil-bptt - bptt"] == pytest.approx(expected)
    assert chip["bptt"]["chip"] == pytest.approx([100 * by_seed[s]["bptt"].final.chip for s in (0, 1)])
    table = (tmp_path / "seeds" / "seeds.md").read_text()
    assert "| cil-bptt |" in table and "cil-bptt minus bptt" in table


def test_cross_validation_validates_each_sample_once_and_pools_paired_margins(tmp_path, daemon, capsys):
    base = TrainConfig(out=str(tmp_path / "cv"), chip=(daemon.address,), val_fraction=0.5, **TINY)
    base.extra["epochs"] = {"bptt": 1, "cil-bptt": 1}
    by_fold = run_folds(base, ["bptt", "cil-bptt"], budget_min=5)  # 1 / 0.5 = 2 folds
    assert list(by_fold) == [0, 1]
    report = json.loads((tmp_path / "cv" / "folds.json").read_text())
    finals = {m: [by_fold[k][m].final for k in (0, 1)] for m in ("bptt", "cil-bptt")}
    n = sum(f.n for f in finals["bptt"])
    right = {m: sum(int((f.chip_pred == f.labels).sum()) for f in finals[m]) for m in finals}
    assert report["pooled"]["bptt"]["chip"] == pytest.approx(100 * right["bptt"] / n)
    paired = report["paired"]["cil-bptt - bptt"]
    assert paired["samples"] == n
    assert paired["margin"] == pytest.approx(100 * (right["cil-bptt"] - right["bptt"]) / n)
    assert paired["only_model_right"] - paired["only_baseline_right"] == right["cil-bptt"] - right["bptt"]
    assert "Pooled over" in (tmp_path / "cv" / "folds.md").read_text()
    with pytest.raises(InvalidArgument, match="folds"):
        run_folds(base, ["bptt"], [2])


def test_cross_validation_over_seeds_pools_every_seed_and_fold(tmp_path, daemon, capsys):
    out = tmp_path / "cvs"
    command = ["experiment", "--methods", "bptt,cil-bptt", "--seeds", "0,1", "--folds", "1", "--val-fraction", "0.5",
               "--epochs", "1", "--out", str(out), *tiny_cli_args(daemon, 20)]  # fmt: skip
    assert main(command) == 0
    assert "Pooled over 40 validations" in capsys.readouterr().out  # 2 seeds x fold 1 x 20
    assert (out / "seed1" / "fold1" / "cil-bptt" / "checkpoint.pt").is_file()
    report = json.loads((out / "cv.json").read_text())
    per_seed = [json.loads((out / f"seed{s}" / "folds.json").read_text()) for s in (0, 1)]
    assert report["seeds"] == [0, 1]
    assert report["percent"]["bptt"]["chip"] == pytest.approx([p["pooled"]["bptt"]["chip"] for p in per_seed])
    pair = report["paired"]["cil-bptt - bptt"]
    for key in ("samples", "only_model_right", "only_baseline_right"):
        assert pair[key] == sum(p["paired"]["cil-bptt - bptt"][key] for p in per_seed)
    # From the runs already there (--resume measures the checkpoints again): the same figures.
    assert main([*command, "--resume"]) == 0
    assert json.loads((out / "cv.json").read_text())["paired"] == report["paired"]


def test_paired_margin_counts_the_samples_only_one_model_got_right():
    labels = np.array([0, 1, 2, 3])

    def result(chip_pred):
        return EvalResult(4, 1.0, 1.0, 1.0, 0.5, 0.5, labels=labels, chip_pred=np.array(chip_pred))

    p = paired_margin([result([0, 1, 2, 0])], [result([0, 0, 0, 3])])  # 3 right vs 2 right
    assert (p["only_model_right"], p["only_baseline_right"], p["samples"]) == (2, 1, 4)
    assert p["margin"] == pytest.approx(25.0)
    assert p["standard_error"] == pytest.approx(100 * np.std([0, 1, 1, -1], ddof=1) / 2)
    assert paired_margin([result([0, 1, 2, 0])], [EvalResult(4, 1.0, 1.0, 1.0, None, None)]) is None


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"max_train": 0}, "max_train"),
        ({"max_val": 0}, "max_val"),
        ({"calibration_samples": 0}, "calibration_samples"),
        ({"pretrain_epochs": -1}, "pretrain_epochs"),
        ({"substitute_hidden": (2, 5)}, "substitute_hidden[1]"),
        ({"method": "bptt", "substitute_hidden": (2,)}, "substitute_hidden"),
        ({"init_target": 0.0}, "init_target"),
        ({"readout": "spikes"}, "readout"),
        ({"surrogate_width": 0.0}, "surrogate_width"),
        ({"fold": 5}, "fold"),
        ({"fold": -1}, "fold"),
        ({"lr": float("nan")}, "lr"),
        ({"lr": float("inf")}, "lr"),
        ({"surrogate_width": float("inf")}, "surrogate_width"),
        ({"init_target": float("inf")}, "init_target"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**40}, "seed"),
        ({"duration_us": 2**61}, "duration_us"),
    ],
)
def test_bad_settings_are_refused_by_name(changes, field):
    with pytest.raises(InvalidArgument) as err:
        replace(TrainConfig(method="cil-bptt"), **changes).check()
    assert err.value.field == field


@pytest.mark.parametrize("flag", ["--lr", "--duration-ms", "--width", "--theta-low", "--surrogate-width"])
def test_the_cli_refuses_non_finite_numbers_before_anything_runs(flag, tmp_path, capsys):
    from chiploop.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", "--out", str(tmp_path), flag, "nan"])
    assert exit_.value.code == 2
    assert f"argument {flag}: must be a finite number, got 'nan'" in capsys.readouterr().err


def test_experiment_refuses_unknown_methods_and_gives_hidden_substitution_to_cil_bptt_only(tmp_path):
    with pytest.raises(InvalidArgument, match="unknown bpt"):
        run_experiment(TrainConfig(out=str(tmp_path)), ["bpt"])
    configs = plan(replace(TrainConfig(out=str(tmp_path)), substitute_hidden=(2,)), ["bptt", "cil-bptt"], 5)
    assert configs["bptt"].substitute_hidden == () and configs["cil-bptt"].substitute_hidden == (2,)
    # Unset, each method gets its own default: every hidden layer for cil-bptt, none for the rest.
    configs = plan(TrainConfig(out=str(tmp_path)).check(), ["bptt", "cil-bptt"], 5)
    assert configs["bptt"].check().substitute_hidden == ()
    assert configs["cil-bptt"].check().substitute_hidden == HIDDEN_LAYERS
    assert TrainConfig(method="cil-ann").check().substitute_hidden == ()
    configs = plan(TrainConfig(method="bptt", out=str(tmp_path)).check(), ["bptt", "cil-bptt"], 5)
    assert configs["cil-bptt"].check().substitute_hidden == HIDDEN_LAYERS


def test_options_a_method_would_ignore_are_refused_by_train_and_left_at_defaults_by_the_experiment(tmp_path):
    for method, changes, field in [
        ("cil-ann", {"neuron": "leaky"}, "neuron"),
        ("cnn", {"readout": "counts"}, "readout"),
        ("cnn", {"qat": False}, "qat"),
        ("cil-bptt", {"qat": False}, "qat"),
        ("bptt", {"pretrain_epochs": 1}, "pretrain_epochs"),
    ]:
        with pytest.raises(InvalidArgument, match=f"applies to .*, not {method}") as err:
            train(replace(TrainConfig(method=method, out=str(tmp_path / "never")), **changes))
        assert err.value.field == field
    assert not (tmp_path / "never").exists()
    base = TrainConfig(out=str(tmp_path), readout="counts", qat=False, neuron="leaky", pretrain_epochs=1)
    configs = plan(base, ["cnn", "bptt", "cil-bptt", "cil-ann"], 5)
    assert (configs["cnn"].readout, configs["cnn"].qat, configs["cnn"].neuron) == ("charge", True, "iaf")
    assert (configs["bptt"].readout, configs["bptt"].qat, configs["bptt"].neuron) == ("counts", False, "leaky")
    assert (configs["cil-bptt"].qat, configs["cil-bptt"].pretrain_epochs, configs["cil-ann"].pretrain_epochs) == (True, 1, 1)
    assert configs["bptt"].pretrain_epochs == 0
    for cfg in configs.values():
        cfg.check().check_applies()


def test_a_resume_hint_names_only_checkpoints_this_command_wrote(tmp_path):
    """train and experiment print a --resume hint when the chip fails them, if they left a checkpoint."""
    old = tmp_path / "table" / "bptt" / "checkpoint.pt"
    old.parent.mkdir(parents=True)
    old.write_text("")
    os.utime(old, (1000.0, 1000.0))  # a run this command replaces, or one from before it
    since = time.time()
    assert not checkpoints_written(str(tmp_path / "table"), since, "checkpoint.pt")
    new = tmp_path / "table" / "seed1" / "fold0" / "cil-bptt" / "checkpoint.pt"  # nested, as cross-validation lays out
    new.parent.mkdir(parents=True)
    new.write_text("")
    os.utime(new, (since + 1, since + 1))  # the file system's clock may lag time.time() by a tick
    assert checkpoints_written(str(tmp_path / "table"), since, "checkpoint.pt")
    assert not checkpoints_written(str(tmp_path / "none"), since, "checkpoint.pt")


def test_an_out_that_cannot_hold_the_run_or_holds_one_is_refused_before_anything_runs(tmp_path):
    (tmp_path / "file").write_text("")
    (tmp_path / "table" / "bptt").mkdir(parents=True)
    (tmp_path / "table" / "bptt" / "checkpoint.pt").write_text("")
    for out, match in [
        (tmp_path / "file", "is a file, not a folder"),
        ("", "must name a folder"),
        (tmp_path / "table" / "bptt", "holds a run already .*--resume continues it, --overwrite replaces it"),
        (tmp_path / "records", "holds a run's metrics.csv but no checkpoint.pt to resume it from: --overwrite"),
        (tmp_path / "ckpt_folder", "checkpoint.pt is not a file"),
    ]:
        (tmp_path / "records").mkdir(exist_ok=True)
        (tmp_path / "records" / "metrics.csv").write_text("epoch\n0\n")  # its checkpoint deleted to save room
        (tmp_path / "ckpt_folder" / "checkpoint.pt").mkdir(parents=True, exist_ok=True)
        for resume in (False, True) if "records" in str(out) or "ckpt_folder" in str(out) else (False,):
            with pytest.raises(InvalidArgument, match=match):
                train(TrainConfig(method="bptt", out=str(out), resume=resume))
    # The experiment looks at every method's folder before the first one trains, and at every
    # seed's and fold's before the first seed or fold trains.
    with pytest.raises(InvalidArgument, match="holds a run already"):
        run_experiment(TrainConfig(out=str(tmp_path / "table")), ["cnn", "bptt"])
    assert not (tmp_path / "table" / "cnn").exists()
    (tmp_path / "cv" / "seed1" / "fold3" / "bptt").mkdir(parents=True)
    (tmp_path / "cv" / "seed1" / "fold3" / "bptt" / "checkpoint.pt").write_text("")
    with pytest.raises(InvalidArgument, match="seed1/fold3/bptt holds a run already"):
        run_cv(TrainConfig(out=str(tmp_path / "cv")), ["bptt"], [0, 1], None)
    with pytest.raises(InvalidArgument, match="fold3/bptt holds a run already"):
        run_folds(TrainConfig(out=str(tmp_path / "cv" / "seed1"), seed=1), ["bptt"], None)
    assert not (tmp_path / "cv" / "seed0").exists()
    for out in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(InvalidArgument, match="file is a file, not a folder"):
            run_experiment(TrainConfig(out=str(out)), ["bptt"])
    with pytest.raises(InvalidArgument, match="--folds runs the folds"):
        main(["experiment", "--folds", "all", "--fold", "2", "--out", str(tmp_path / "cv")])


def test_experiment_resume_with_other_settings_is_refused_before_any_method_trains_on(tmp_path):
    for method in ("bptt", "cil-bptt"):
        (tmp_path / method).mkdir()
        saved = TrainConfig(method=method, out=str(tmp_path / method)).check().to_dict()
        torch.save({"config": saved, "epoch": 0, "method": {}, "history": []}, tmp_path / method / "checkpoint.pt")
    before = (tmp_path / "bptt" / "checkpoint.pt").read_bytes()
    with pytest.raises(InvalidArgument, match="substitute_hidden: is \\(\\) but .*cil-bptt/checkpoint.pt was trained with"):
        run_experiment(TrainConfig(out=str(tmp_path), resume=True, substitute_hidden=()), ["bptt", "cil-bptt"])
    assert (tmp_path / "bptt" / "checkpoint.pt").read_bytes() == before  # bptt did not train on first


def test_warm_up_epochs_are_held_to_each_planned_runs_own_epochs(tmp_path):
    base = TrainConfig(out=str(tmp_path), pretrain_epochs=10).check()  # the base's 8 epochs are nobody's
    base.extra["epochs"] = {"bptt": 15, "cil-bptt": 15}
    assert check_plan([base], ["bptt", "cil-bptt"], 5) == ["bptt", "cil-bptt"]
    base.extra["epochs"] = {"bptt": 15, "cil-bptt": 10}
    with pytest.raises(InvalidArgument, match="pretrain_epochs: is 10 of 10 epochs: cil-bptt would never"):
        check_plan([base], ["bptt", "cil-bptt"], 5)


def test_runs_recorded_before_ignored_options_were_refused_still_start_others(tmp_path):
    # Before f5b5d73 an experiment recorded every option in every method's config.
    old = TrainConfig(method="cnn-qat", neuron="leaky", readout="counts").to_dict()
    torch.save({"config": old, "epoch": 0, "method": {"model": {}}, "history": []}, tmp_path / "old.pt")
    assert _initial_model(TrainConfig(method="cil-ann", init_from=str(tmp_path / "old.pt"))) == {}


def test_a_run_records_its_data_folder_so_eval_finds_it_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert TrainConfig(data="nmnist").check().data == str(tmp_path / "nmnist")


def test_a_folder_a_run_is_training_into_is_refused_to_a_second_run(tmp_path):
    with training_into(tmp_path):
        with pytest.raises(InvalidArgument, match="is in use: another run is training into it now"):
            with training_into(tmp_path):
                pass
        # Not even --overwrite: and the running run's TensorBoard events stay.
        (tmp_path / "tb").mkdir()
        (tmp_path / "tb" / "events.1").write_text("")
        cfg = TrainConfig(method="bptt", out=str(tmp_path), overwrite=True, chip=("inprocess",), **TINY)
        with pytest.raises(InvalidArgument, match="is in use"):
            train(cfg)
        assert (tmp_path / "tb" / "events.1").exists()
    with training_into(tmp_path):  # released with the first run
        pass


def test_a_split_that_leaves_either_side_empty_is_refused():
    labels = np.repeat(np.arange(10), 10)
    for fraction in (0.999, 0.0001):
        with pytest.raises(InvalidArgument, match="split empty") as err:
            split_indices(TrainConfig(val_fraction=fraction).check(), labels)
        assert err.value.field == "val_fraction"


def test_fold_reports_say_every_sample_was_validated_only_when_it_was():
    cfg = TrainConfig().check()
    assert covers_every_sample(cfg, None) and covers_every_sample(cfg, [4, 3, 2, 1, 0])
    assert not covers_every_sample(cfg, [0, 1]) and not covers_every_sample(replace(cfg, max_val=16), None)


def test_missing_or_foreign_checkpoints_are_refused(tmp_path):
    with pytest.raises(InvalidArgument, match="no such file"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(InvalidArgument, match="not a torch checkpoint"):
        load_checkpoint(tmp_path / "text.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(InvalidArgument, match="not a chiploop training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(InvalidArgument, match="budget"):
        run_experiment(TrainConfig(out=str(tmp_path)), ["bptt"], budget_min=0)


def test_cil_bptt_starts_from_a_bptt_checkpoint_trained_without_the_chip(tmp_path, daemon):
    base = TrainConfig(method="bptt", epochs=1, out=str(tmp_path / "bptt"), chip=(daemon.address,), **TINY)
    bptt = train(base)
    start = str(bptt.out / "checkpoint.pt")
    # A learning rate too small to move a float32 weight: the run keeps exactly the model it started from.
    tuned = train(replace(base, method="cil-bptt", out=str(tmp_path / "cil"), init_from=start, lr=1e-30))
    before = load_checkpoint(start)["method"]["model"]
    after = load_checkpoint(tuned.out / "checkpoint.pt")["method"]["model"]
    trained = [k for k in before if k.startswith(("convs.", "theta"))]
    assert len(trained) == 7  # six layers' weights and the thresholds
    for key in trained:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0)
    assert json.loads((tuned.out / "config.json").read_text())["init_from"] == start

    with pytest.raises(InvalidArgument, match="holds a bptt model; cil-ann starts only from cnn or cnn-qat or cil-ann"):
        train(replace(base, method="cil-ann", out=str(tmp_path / "x"), init_from=start))
    with pytest.raises(InvalidArgument, match="width"):
        train(replace(base, method="cil-bptt", out=str(tmp_path / "x"), init_from=start, width=0.5))
    with pytest.raises(InvalidArgument, match="no such file"):
        main(["train", "--method", "cil-bptt", "--init-from", str(tmp_path / "none.pt"), *tiny_cli_args(daemon, 8)])


def test_cil_bptt_substitutes_every_hidden_layer_unless_told_otherwise(tmp_path, daemon, capsys):
    for name, flags, expected in [
        ("default", (), list(HIDDEN_LAYERS)),
        ("outputs", ("--substitute-hidden", "none"), []),
        ("some", ("--substitute-hidden", "3,4"), [3, 4]),
    ]:
        out = tmp_path / name
        assert main(["train", "--method", "cil-bptt", "--epochs", "1", "--out", str(out),
                     *tiny_cli_args(daemon, 8, *flags)]) == 0  # fmt: skip
        assert json.loads((out / "config.json").read_text())["substitute_hidden"] == expected, name
    capsys.readouterr()
    with pytest.raises(InvalidArgument, match="only cil-bptt"):
        main(["train", "--method", "bptt", "--out", str(tmp_path / "x"), *tiny_cli_args(daemon, 8, "--substitute-hidden", "2")])


def test_theta_low_none_means_no_hidden_clamp(tmp_path, daemon, capsys):
    out = tmp_path / "noclamp"
    args = tiny_cli_args(daemon, 20, "--theta-low", "none")
    assert main(["train", "--method", "bptt", "--epochs", "1", "--out", str(out), *args]) == 0
    capsys.readouterr()
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["config"]["theta_low"] is None
    spec = train(replace(TrainConfig.from_dict(ckpt["config"]), resume=True, chip=(daemon.address,))).spec
    assert all(layer.threshold_low == -32768 for layer in spec.layers)


def test_sinabs_recipe_trains_in_float_reads_counts_and_quantizes_after_training(tmp_path, daemon, capsys):
    out = tmp_path / "sinabs"
    args = tiny_cli_args(daemon, 30, "--readout", "counts", "--no-qat", "--init-target", "none", "--theta-low", "-1")
    assert main(["train", "--method", "bptt", "--epochs", "1", "--out", str(out), *args]) == 0
    trained = json.loads(capsys.readouterr().out)
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert {k: ckpt["config"][k] for k in ("readout", "qat", "init_target", "theta_low")} == {
        "readout": "counts", "qat": False, "init_target": None, "theta_low": -1.0,
    }  # fmt: skip
    # Quantized after training: every layer's scale comes from its final weights, so each reaches 127.
    spec = train(replace(TrainConfig.from_dict(ckpt["config"]), resume=True, chip=(daemon.address,))).spec
    assert [int(np.abs(layer.weights).max()) for layer in spec.layers] == [127] * len(spec.layers)
    capsys.readouterr()
    # eval rebuilds the counts readout from the checkpoint: the run's own numbers again.
    assert main(["eval", str(out / "checkpoint.pt"), "--chip", daemon.address, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("software", "sync_int", "chip"):
        assert report[key] == pytest.approx(trained[key])
