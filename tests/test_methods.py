"""The training methods against a real local daemon (the simulator behind gRPC)."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from chiploop.architectures import Architecture, ConvStage
from chiploop.data import NMNIST, make_batch, readout_for
from chiploop.errors import InvalidArgument
from chiploop.export import export_spec
from chiploop.run import Readout
from chiploop.spec import InputLayer
from chiploop.training.chip import ChipPool
from chiploop.training.config import HIDDEN_LAYERS, TrainConfig
from chiploop.training.evaluate import evaluate
from chiploop.training.evaluate_checkpoint import EVAL_ADVICE
from chiploop.training.methods import METHODS, make_method
from chiploop.training.substitute import chip_outputs, straight_through
from chiploop.training.trainer import backend_advice, with_backend_advice
from conftest import DATA, needs_data

#: On the CPU even where a GPU is: these tests make their frames there (tests/test_device.py covers CUDA).
TINY = dict(width=0.25, bins=3, batch_size=24, lr=3e-3, calibration_samples=24, progress=False, device="cpu")
#: sinabs' usual recipe for Speck (the issue's kind of bptt baseline).
SINABS_RECIPE = dict(readout="counts", qat=False, init_target=None, theta_low=-1.0)


@pytest.fixture(scope="module")
def chip(daemon):
    pool = ChipPool([daemon.address])
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def batch():
    ds = NMNIST(DATA)
    return make_batch(ds, np.arange(24), readout_for(TINY["bins"], 320_000))


def test_straight_through_forward_is_chip_backward_is_sync():
    sync = torch.tensor([[0.5, 2.0, -1.0]], requires_grad=True)
    chip = np.array([[3.0, 0.0, 1.0]], np.float32)
    y = straight_through(sync, chip)
    assert torch.equal(y.detach(), torch.from_numpy(chip))
    g = torch.tensor([[1.0, -2.0, 0.5]])
    (y * g).sum().backward()
    assert torch.equal(sync.grad, g)


def test_a_chip_output_of_another_shape_is_refused_not_reshaped():
    sync = torch.zeros(8, 4, 10, requires_grad=True)
    for chip in (np.zeros((16, 2, 10), np.float32), np.zeros((8, 5, 10), np.float32)):  # same size; one bin more
        with pytest.raises(InvalidArgument, match=r"chip: shape \(\d+, \d, 10\) is not the synchronous output's \(8, 4, 10\)"):
            straight_through(sync, chip)


@needs_data
def test_labels_that_are_not_a_class_of_the_network_are_refused_naming_the_sample(batch):
    cfg = TrainConfig(method="bptt", **TINY)
    method = make_method(cfg, readout_for(cfg.bins, cfg.duration_us))
    method.setup(torch.from_numpy(batch.frames))
    wrong = replace(batch, labels=batch.labels.copy())
    wrong.labels[5] = 10
    with pytest.raises(InvalidArgument, match=rf"labels\[{int(batch.indices[5])}\]: 10 is not a class of the network \(0..9\)"):
        method.step(wrong, None)


@needs_data
@pytest.mark.parametrize("readout,hidden", [("charge", None), ("counts", None), ("charge", ())])
def test_cil_bptt_loss_is_the_chips_and_its_gradient_the_sync_graphs(chip, batch, readout, hidden):
    """Forward value from the chip, gradient = sync Jacobian^T at the chip's loss gradient.

    hidden None: cil-bptt's default, every hidden layer's spikes from the chip too, so the
    sync graph is evaluated with the chip's hidden spikes injected; (): the outputs alone.
    """
    torch.manual_seed(0)
    cfg = TrainConfig(method="cil-bptt", readout=readout, substitute_hidden=hidden, **TINY)
    method = make_method(cfg, readout_for(cfg.bins, cfg.duration_us))
    assert cfg.substitute_hidden == (HIDDEN_LAYERS if hidden is None else ())
    # Membranes are asked for only when the readout reads them (a Speck board cannot snapshot them).
    assert method.chip_readout.membrane_layers == ((5,) if readout == "charge" else ())
    method.setup(torch.from_numpy(batch.frames))
    method.start_epoch(0, torch.from_numpy(batch.frames), chip)
    labels = torch.from_numpy(batch.labels)

    loss, score, _ = method.loss_and_score(batch, chip)
    # The daemon's own per-neuron counts: the trainer bins the monitored layers' events itself.
    result = chip.run(batch.events, replace(method.chip_readout, spatial_counts=True))
    spikes_chip, v_chip = chip_outputs(result, 5)
    chip_hidden = {i: torch.from_numpy(result.counts[i].astype(np.float32)) for i in cfg.substitute_hidden}
    out = method.model(torch.from_numpy(batch.frames), ticks=method.ticks, chip_spikes=chip_hidden or None)
    score_chip = spikes_chip.sum(1) + (v_chip[:, -1] / out.threshold if readout == "charge" else 0)
    torch.testing.assert_close(score, score_chip)  # the value is the chip's
    sync_alone = method.model(torch.from_numpy(batch.frames), ticks=method.ticks).score.detach()
    assert not torch.equal(score_chip, sync_alone)  # ... and differs from the sync model's own
    torch.testing.assert_close(loss, F.cross_entropy(score_chip, labels))

    weights = [c.weight for c in method.model.convs]
    grads = torch.autograd.grad(loss, weights)
    dloss_dscore = (torch.softmax(score_chip, 1) - F.one_hot(labels, 10).float()) / len(labels)
    expected = torch.autograd.grad(out.score, weights, grad_outputs=dloss_dscore)
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


@needs_data
@pytest.mark.parametrize(
    "name,neuron,recipe",
    [(m, "iaf", {}) for m in sorted(METHODS)]
    + [("cil-bptt", "leaky", {}), ("bptt", "iaf", SINABS_RECIPE), ("cil-bptt", "iaf", SINABS_RECIPE)],
)
def test_each_method_lowers_its_loss_against_the_daemon(name, neuron, recipe, chip, batch):
    torch.manual_seed(0)
    cfg = TrainConfig(method=name, neuron=neuron, **TINY, **recipe)
    method = make_method(cfg, readout_for(cfg.bins, cfg.duration_us))
    calib = torch.from_numpy(batch.frames)
    method.setup(calib)
    method.start_epoch(0, calib, chip)
    losses = [method.step(batch, chip).loss for _ in range(6)]
    assert losses[-1] < losses[0], losses
    if method.chip_in_loop:
        # The chip now holds exactly the method's current integer network (leaks included).
        assert chip.model_id == chip.clients[0].deploy(method.loop_spec()).model_id


@needs_data
@pytest.mark.parametrize("name", ["bptt", "cil-bptt", "cil-ann"])
def test_a_method_trains_a_network_of_ones_own_on_its_own_input_stage(name, chip):
    """Three layers on N-MNIST pooled 2x2 by the chip's input stage, polarities merged."""
    arch = Architecture("small", (1, 17, 17), (ConvStage(8, 3, padding=1, pool=2), ConvStage(16, 3, padding=1, pool=2), ConvStage(10, 4)))
    stage = InputLayer(sensor_size=(34, 34), pool=(2, 2), merge_polarities=True)
    torch.manual_seed(0)
    cfg = TrainConfig(method=name, **{**TINY, "width": 1.0})
    method = make_method(cfg, readout_for(cfg.bins, cfg.duration_us), arch, stage)
    assert method.arch.name == "small" and cfg.substitute_hidden == ((0, 1) if name == "cil-bptt" else ())
    batch = make_batch(NMNIST(DATA), np.arange(24), method.readout, input_layer=stage)
    calib = torch.from_numpy(batch.frames)
    method.setup(calib)
    method.start_epoch(0, calib, chip)
    losses = [method.step(batch, chip).loss for _ in range(6)]
    assert losses[-1] < losses[0], losses
    assert method.spec().input == stage and len(method.spec().layers) == 3
    if method.chip_in_loop:
        assert chip.model_id == chip.clients[0].deploy(method.loop_spec()).model_id
    result = evaluate(method, NMNIST(DATA), np.arange(24, 40), chip, batch_size=8)  # bins with the method's stage
    assert result.n == 16 and result.chip is not None
    merged = Architecture("merged", (1, 34, 34), arch.stages[:1] + (ConvStage(10, 17),))
    assert make_method(replace(cfg, method="bptt", substitute_hidden=None), method.readout, merged).input_layer == (
        InputLayer(sensor_size=(34, 34), merge_polarities=True)  # the architecture's own, as export's default
    )
    with pytest.raises(InvalidArgument, match=r"substitute_hidden\[0\]: must be a hidden layer, 0..1, got 2"):
        make_method(replace(cfg, method="cil-bptt", substitute_hidden=(2,)), method.readout, arch, stage)


@needs_data
def test_a_samna_backends_refusal_names_the_training_flag_that_avoids_it(batch):
    """The samna backends' own checks (pure functions, no samna needed) against what cil-bptt asks
    of the chip by default, and then with the flags the advice names."""
    from chiploop_server.devices.samna_backends import check_readout, check_supported

    def loop_asks(**settings):
        cfg = TrainConfig(method="cil-bptt", **TINY, **settings)
        method = make_method(cfg, readout_for(cfg.bins, cfg.duration_us))
        method.setup(torch.from_numpy(batch.frames))
        return method.loop_spec(), method.chip_readout

    spec, readout = loop_asks()
    with pytest.raises(InvalidArgument) as refused:
        check_supported(spec, "specksim")
    assert str(with_backend_advice(refused.value)).startswith(
        "monitor: backend specksim returns the last layer's spikes only; --substitute-hidden none trains"
    )
    with pytest.raises(InvalidArgument) as refused:
        check_readout(readout, len(spec.layers), "depth_first", "speck")
    assert str(with_backend_advice(refused.value)).startswith(
        "readout.membrane_layers: backend speck cannot snapshot membranes yet; --readout counts reads"
    )
    with pytest.raises(InvalidArgument) as refused:
        check_readout(replace(readout, membrane_layers=()), len(spec.layers), "breadth_first", "specksim")
    assert "; training runs the chip's depth-first order" in str(with_backend_advice(refused.value))
    other = InvalidArgument("lr", "must be > 0")
    assert with_backend_advice(other) is other

    spec, readout = loop_asks(substitute_hidden=(), readout="counts")
    check_supported(spec, "specksim")
    check_readout(readout, len(spec.layers), "depth_first", "speck")


@needs_data
def test_a_board_refusing_a_checkpoints_readout_says_what_to_do_instead(batch):
    """``chiploop eval`` cannot change a trained readout: its advice names a 'sim' daemon or a
    retrain, through the same wrapper the trainer uses."""
    from chiploop_server.devices.samna_backends import check_readout

    cfg = TrainConfig(method="bptt", **TINY)  # the charge readout: output membranes
    method = make_method(cfg, readout_for(cfg.bins, cfg.duration_us))
    method.setup(torch.from_numpy(batch.frames))
    with pytest.raises(InvalidArgument, match=r"^readout.membrane_layers: backend speck cannot snapshot "
                       r"membranes yet; this checkpoint's readout \(trained with --readout charge\)"):
        with backend_advice(EVAL_ADVICE):
            check_readout(method.chip_readout, len(method.loop_spec().layers), "depth_first", "speck")


@needs_data
def test_a_batch_split_across_two_daemons_equals_one_daemon(daemon, chip, batch):
    from chiploop_server.local import LocalDaemon

    torch.manual_seed(0)
    cfg = TrainConfig(method="bptt", **TINY)
    method = make_method(cfg, readout_for(cfg.bins, cfg.duration_us))
    method.setup(torch.from_numpy(batch.frames))
    spec = export_spec(method.model, method.readout.bin_us)
    readout = replace(method.chip_readout, mode="depth_first")
    chip.deploy(spec)
    one = chip.run(batch.events, readout)
    with LocalDaemon(backend="sim", workers=1) as second:
        pool = ChipPool([daemon.address, second.address])
        pool.deploy(spec)
        two = pool.run(batch.events, readout)
        pool.close()
    np.testing.assert_array_equal(one.counts[5], two.counts[5])
    np.testing.assert_array_equal(one.membranes[5], two.membranes[5])
    np.testing.assert_array_equal(one.output_offsets, two.output_offsets)


def test_a_pool_deploys_its_network_again_where_a_daemon_lost_it(nmnist_samples):
    """Evicted by another user's models (max_models 1), or gone with a restarted daemon: the pool
    deploys the network it holds, with every update since, and the run goes on as if nothing happened."""
    import socket
    import threading

    from chiploop_server.config import DaemonConfig
    from chiploop_server.daemon import Daemon
    from conftest import small_spec

    spec, readout = small_spec(threshold=8), Readout(bin_us=100_000, num_bins=3)
    louder = {1: np.clip(spec.layers[1].weights.astype(np.int16) + 2, -128, 127).astype(np.int8)}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = DaemonConfig(address=f"127.0.0.1:{port}", max_models=1, warm_up=False)
    with Daemon(config) as daemon:
        mine, theirs = ChipPool([daemon.address]), ChipPool([daemon.address])
        mine.deploy(spec)
        theirs.deploy(small_spec(seed=1))  # evicts mine
        first = mine.run(nmnist_samples[:4], readout)
        theirs.deploy(small_spec(seed=2))
        mine.update_weights(louder)  # its base is gone: the whole updated network goes again
        theirs.deploy(small_spec(seed=3))
        second = mine.run(nmnist_samples[:4], readout)
    restarted = Daemon(config)
    threading.Timer(1.0, restarted.start).start()  # down for a second, back without any model
    try:
        third = mine.run(nmnist_samples[:4], readout)
    finally:
        restarted.stop(grace=0)
        mine.close()
        theirs.close()
    with Daemon(DaemonConfig(address="127.0.0.1:0", warm_up=False)) as fresh:
        alone = ChipPool([fresh.address])
        alone.deploy(spec)
        np.testing.assert_array_equal(first.counts[1], alone.run(nmnist_samples[:4], readout).counts[1])
        alone.update_weights(louder)
        expected = alone.run(nmnist_samples[:4], readout).counts[1]
        alone.close()
    np.testing.assert_array_equal(second.counts[1], expected)
    np.testing.assert_array_equal(third.counts[1], expected)


def test_a_batch_runs_on_the_network_it_was_submitted_to(daemon, nmnist_samples):
    from conftest import small_spec

    spec, readout = small_spec(threshold=8), Readout(bin_us=100_000, num_bins=3)
    louder = {1: np.clip(spec.layers[1].weights.astype(np.int16) + 2, -128, 127).astype(np.int8)}
    pool = ChipPool([daemon.address])
    try:
        pool.deploy(spec)
        before = pool.run(nmnist_samples[:4], readout)
        busy = pool.run_async(nmnist_samples * 4, readout)  # the pool's one thread is on it
        waiting = pool.run_async(nmnist_samples[:4], readout)
        pool.update_weights(louder)
        busy.result()
        np.testing.assert_array_equal(waiting.result().counts[1], before.counts[1])
    finally:
        pool.close()


def test_a_pool_on_an_address_where_no_daemon_answers_fails_at_once():
    import socket

    from chiploop.errors import BackendUnavailable
    from chiploop.training.chip import CONNECT_TIMEOUT_S

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=f"127.0.0.1:{port}"):
        ChipPool([f"127.0.0.1:{port}"])
    assert time.monotonic() - started < CONNECT_TIMEOUT_S + 5  # not the ~30 s a restart is given
