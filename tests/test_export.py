"""Export to the chip's NetworkSpec: valid, and bit-exact with the simulator's synchronous mode."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from chiploop.architectures import NMNIST_PAPER, Architecture, ConvStage
from chiploop.data import NMNIST, make_batch, readout_for
from chiploop.errors import InvalidArgument, NetworkRejected
from chiploop.export import ann_to_snn, balance, export_spec, integer_layers, updated_weights
from chiploop.limits import validate
from chiploop.models import ANNTwin, SpikingCNN, data_init, leak_ticks, scaled_architecture
from chiploop.run import pack_samples
from chiploop.spec import InputLayer
from chiploop.training.device import resolve_device
from chiploop_server.sim import SimNetwork, run_batch
from conftest import DATA, needs_data

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]),
]


def test_default_model_exports_the_paper_network():
    torch.manual_seed(0)
    model = SpikingCNN()
    spec = export_spec(model, bin_us=64_000)
    assert len(validate(spec)) == 6 and spec.output_layers == (5,)
    for i, (layer, q) in enumerate(zip(spec.layers, integer_layers(model), strict=True)):
        assert layer.weights.dtype == np.int8 and layer.weights.shape == model.convs[i].weight.shape
        np.testing.assert_array_equal(layer.weights, model.weight_units(i, True).detach().numpy())
        assert (layer.threshold_high, layer.threshold_low) == tuple(int(t) for t in model.thresholds(i, True))
        assert layer.threshold_high == q.threshold_high and layer.leak is None
    assert all(layer.threshold_low == -32768 for layer in spec.layers)  # by default no layer clamps
    clamped = export_spec(SpikingCNN(theta_low=-1.0), bin_us=64_000)
    assert clamped.layers[5].threshold_low == -32768  # the output layer never clamps
    assert clamped.layers[0].threshold_low == -clamped.layers[0].threshold_high


def test_leaky_export_ticks_once_per_bin_and_a_too_big_model_is_refused():
    spec = export_spec(SpikingCNN(scaled_architecture(NMNIST_PAPER, 0.5), neuron="leaky"), bin_us=40_000)
    assert all(layer.leak_period_us == 40_000 and layer.leak.dtype == np.int16 for layer in spec.layers)
    assert leak_ticks(0, 40_000, 4, 40_000) == [0, 1, 1, 1]
    with pytest.raises(NetworkRejected, match="memory"):
        export_spec(SpikingCNN(scaled_architecture(NMNIST_PAPER, 4.0)), bin_us=40_000)


@needs_data
@pytest.mark.parametrize(("neuron", "theta_low"), [("iaf", None), ("iaf", -1.0), ("leaky", -1.0)])
@pytest.mark.parametrize("where", ["in-process", "daemon"])
@pytest.mark.parametrize("device", DEVICES)
def test_quantized_forward_equals_the_simulators_sync_mode(neuron, theta_low, where, device, request):
    """The torch integer network and the simulator's synchronous counterpart agree bit for bit,
    in process and through the daemon (``Readout(mode="sync")``), trained on the CPU or a GPU."""
    resolve_device(device)  # on CUDA: TF32 off, as training does
    torch.manual_seed(1)
    ds = NMNIST(DATA)
    ro = readout_for(5, 320_000)
    batch = make_batch(ds, np.arange(12), ro)
    frames = torch.from_numpy(batch.frames).to(device)
    model = SpikingCNN(neuron=neuron, theta_low=theta_low).to(device)
    data_init(model, frames, target=3.0)
    ticks = leak_ticks(ro.t0_us, ro.bin_us, ro.num_bins, ro.bin_us)
    with torch.no_grad():
        out = model(frames, ticks=ticks)
    spec = export_spec(model, ro.bin_us)
    sync = replace(ro, mode="sync", membrane_layers=(5,))
    if where == "daemon":
        client = request.getfixturevalue("client")
        result = client.run(client.deploy(spec).model_id, batch.events, readout=sync)
    else:
        events, offsets = pack_samples(batch.events)
        result = run_batch(SimNetwork.from_spec(spec), events, offsets, sync)
    assert out.spikes.sum() > 0  # not a trivially silent network
    np.testing.assert_array_equal(result.counts[5], out.spikes.cpu().numpy())
    np.testing.assert_array_equal(result.membranes[5][..., 0, 0], out.v_mem.cpu().numpy())


@needs_data
def test_balanced_conversion_keeps_the_ann_grid_and_its_logit_scale():
    torch.manual_seed(2)
    ds = NMNIST(DATA)
    ro = readout_for(1, 320_000)
    frames = torch.from_numpy(make_batch(ds, np.arange(16), ro).frames)
    ann = ANNTwin(scaled_architecture(NMNIST_PAPER, 0.5))
    bal = balance(ann, [frames], percentile=99.9)
    snn = ann_to_snn(ann, bal)
    thetas = bal.thetas()
    assert thetas[0] == pytest.approx(bal.lambdas[0] / bal.input_lambda)
    assert thetas[3] == pytest.approx(bal.lambdas[3] / bal.lambdas[2])
    assert bal.logit_per_unit == pytest.approx(np.prod(thetas))
    for i in range(ann.num_layers):
        np.testing.assert_array_equal(
            snn.weight_units(i, True).detach().numpy(),
            (ann.convs[i].weight / ann.scale[i]).round().clamp(-128, 127).detach().numpy(),
        )
    with torch.no_grad():
        logits = ann(frames, qat=False)
        score = snn(frames, quantized=False).score  # one bin: the float SNN is the ANN, rounded to spikes
    aligned = score * bal.logit_per_unit  # the SNN's readout in the ANN's logit units
    assert np.corrcoef(logits.flatten().numpy(), aligned.flatten().numpy())[0, 1] > 0.85


@pytest.mark.parametrize("device", DEVICES)
def test_quantized_forward_stays_exact_when_partial_sums_pass_float32s_whole_numbers(device):
    """A threshold-1 hidden layer fires thousands of spikes per bin; the next layer's currents
    then have partial sums past 2**24, where float32 drops low bits. Tuned so the exact current
    (3242) is small while its terms are in the millions: the torch forward must still equal the
    simulator's integer sync mode."""
    from chiploop.architectures import Architecture, ConvStage  # noqa: PLC0415
    from chiploop.events import make_dvs_events  # noqa: PLC0415
    from chiploop.run import Readout  # noqa: PLC0415

    rng = np.random.default_rng(0)
    model = SpikingCNN(Architecture("sat", (2, 34, 34), (ConvStage(16, 1, pool=4), ConvStage(1, 8))))
    w0 = rng.integers(60, 128, 16)
    spikes = np.minimum(300 * w0, 32767)  # per pooled cell: 300 events times w0, threshold 1
    w1 = rng.integers(-127, 128, (1, 16, 8, 8))
    for _ in range(100_000):  # walk the weights until the 256 large terms nearly cancel
        total = int((spikes[:, None, None] * w1[0, :, :4, :4]).sum())
        if abs(total) < 5000:
            break
        k, py, px = rng.integers(0, 16), rng.integers(0, 4), rng.integers(0, 4)
        w1[0, k, py, px] = np.clip(w1[0, k, py, px] - np.sign(total) * min(127, abs(total) // spikes[k]), -127, 127)
    with torch.no_grad():
        model.convs[0].weight.copy_(torch.tensor(np.broadcast_to(w0[:, None, None, None], (16, 2, 1, 1)).copy()))
        model.convs[1].weight.copy_(torch.tensor(w1, dtype=torch.float32))
        model.scale.fill_(1.0)
        model.theta.copy_(torch.tensor([1.0, 1000.0], dtype=torch.float64))
    ys, xs = np.divmod(np.repeat(np.arange(16), 300), 4)
    events = make_dvs_events(xs * 4, ys * 4, [1] * xs.size, [0] * xs.size)
    readout = Readout(t0_us=0, bin_us=1000, num_bins=1)
    frames = torch.zeros(1, 1, 2, 34, 34)
    np.add.at(frames.numpy()[0, 0, 1], (ys * 4, xs * 4), 1)
    resolve_device(device)
    model = model.to(device)
    with torch.no_grad():
        out = model(frames.to(device))
    out = type(out)(**{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in vars(out).items()})
    spec = export_spec(model, readout.bin_us)
    packed, offsets = pack_samples([events])
    result = run_batch(SimNetwork.from_spec(spec), packed, offsets, replace(readout, mode="sync", membrane_layers=(1,)))
    assert float(out.spikes.sum()) >= 1  # the current is the small exact sum, well above zero
    np.testing.assert_array_equal(result.counts[1], out.spikes.numpy())
    np.testing.assert_array_equal(result.membranes[1][..., 0, 0], out.v_mem.numpy())


def test_architecture_spec_passes_values_on_uncast_so_validation_refuses_what_the_chip_cannot_hold():
    """A cast in ``Architecture.spec`` would wrap 200 to -56 and truncate 2.9 to 2, out of
    validation's sight."""
    from chiploop.errors import InvalidArgument  # noqa: PLC0415

    shapes = [layer.weights.shape for layer in export_spec(SpikingCNN(), bin_us=1000).layers]
    weights = [np.ones(shape, np.int16) for shape in shapes]
    thresholds = [10] * len(shapes)
    validate(NMNIST_PAPER.spec(weights, thresholds))
    weights[0][0, 0, 0, 0] = 200
    with pytest.raises(NetworkRejected, match=r"layers\[0\]: weight is 200, the chip allows -128..127"):
        validate(NMNIST_PAPER.spec(weights, thresholds))
    weights[0] = np.full(shapes[0], 2.9, np.float32)
    with pytest.raises(InvalidArgument, match=r"layers\[0\]\.weights: must be an integer array"):
        validate(NMNIST_PAPER.spec(weights, thresholds))
    weights[0] = np.ones(shapes[0], np.int8)
    with pytest.raises(InvalidArgument, match=r"layers\[3\]\.threshold_high: must be an integer, got 2.9"):
        validate(NMNIST_PAPER.spec(weights, [10, 10, 10, 2.9, 10, 10]))


# ---------------------------------------------------------------- a network of one's own

BARS = Architecture(  # a 128x128 sensor pooled 4x4 on the chip, polarities merged
    name="bars",
    in_shape=(1, 32, 32),
    stages=(ConvStage(8, 3, padding=1, pool=2), ConvStage(16, 3, padding=1, pool=2), ConvStage(4, 8)),
)


def test_a_network_of_ones_own_exports_for_its_own_input_and_refuses_another():
    model = SpikingCNN(BARS)
    default = export_spec(model, bin_us=1000)
    assert default.input == InputLayer(sensor_size=(32, 32), merge_polarities=True)
    pooled = InputLayer(sensor_size=(128, 128), pool=(4, 4), merge_polarities=True)
    assert export_spec(model, bin_us=1000, input_layer=pooled).input == pooled
    for wrong in (InputLayer(sensor_size=(128, 128), merge_polarities=True), replace(pooled, merge_polarities=False)):
        with pytest.raises(InvalidArgument, match=r"input: the input stage gives .* bars takes \(1, 32, 32\)"):
            export_spec(model, bin_us=1000, input_layer=wrong)
    with pytest.raises(InvalidArgument, match=r"input: the input stage gives \(2, 34, 34\)"):
        BARS.spec([], [], input_layer=InputLayer(sensor_size=(34, 34)))


def test_frames_of_another_shape_a_bias_or_a_foreign_model_are_refused_by_name():
    model = SpikingCNN(BARS)
    with pytest.raises(InvalidArgument, match=r"frames: bars takes \(C, H, W\) = \(1, 32, 32\) per bin, got \(2, 32, 32\)"):
        model(torch.zeros(1, 2, 2, 32, 32))
    with pytest.raises(InvalidArgument, match=r"frames: .* got \(2, 34, 34\)"):
        ANNTwin(BARS)(torch.zeros(1, 2, 34, 34))
    model.convs[1] = torch.nn.Conv2d(8, 16, 3, padding=1, bias=True)
    for call in (lambda: model(torch.zeros(1, 2, 1, 32, 32)), lambda: export_spec(model, 1000), lambda: updated_weights(model)):
        with pytest.raises(InvalidArgument, match=r"layers\[1\]\.bias: the chip has no biases"):
            call()
    for foreign in (torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3)), ANNTwin(BARS)):
        with pytest.raises(InvalidArgument, match="model: must be a chiploop.models.SpikingCNN"):
            export_spec(foreign, bin_us=1000)


def test_a_leaky_models_default_ticks_are_the_exported_networks():
    torch.manual_seed(3)
    model = SpikingCNN(BARS, neuron="leaky", leak_init=-0.2)
    frames = torch.rand(2, 4, 1, 32, 32).round() * 3
    default = model(frames).v_mem
    assert torch.equal(default, model(frames, ticks=leak_ticks(0, 1000, 4, 1000)).v_mem)  # the export's period
    assert not torch.equal(default, model(frames, ticks=[1, 1, 1, 1]).v_mem)
    with pytest.raises(InvalidArgument, match="ticks: one count per bin: frames have 4 bins, ticks 3"):
        model(frames, ticks=[0, 1, 1])


def test_data_init_runs_the_forward_with_the_ticks_it_is_given():
    torch.manual_seed(5)
    frames = torch.rand(4, 4, 1, 32, 32).round() * 2
    model = SpikingCNN(BARS, neuron="leaky", leak_init=-0.5)
    same = SpikingCNN(BARS, neuron="leaky", leak_init=-0.5)
    same.load_state_dict(model.state_dict())
    data_init(model, frames, ticks=[1, 1, 1, 1])
    data_init(same, frames)  # the forward's default: [0, 1, 1, 1]
    assert not all(torch.equal(a.weight, b.weight) for a, b in zip(model.convs, same.convs, strict=True))
