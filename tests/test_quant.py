"""The quantizer: int8 grid, straight-through gradients, thresholds, and the models' integer units."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from chiploop.architectures import NMNIST_PAPER
from chiploop.errors import InvalidArgument
from chiploop.models import SpikingCNN, scaled_architecture
from chiploop.quant import (
    fake_quant,
    fake_quant_units,
    quantize_threshold,
    quantize_threshold_low,
    quantize_weights,
    weight_scale,
)


def test_max_scale_maps_the_largest_weight_to_127():
    w = torch.tensor([[-0.5, 0.25], [1.0, -1.0]])
    s = weight_scale(w)
    assert s == pytest.approx(1.0 / 127)
    q = quantize_weights(w, s)
    assert q.dtype == np.int8 and q.max() == 127 and q.min() == -127
    np.testing.assert_array_equal(q, np.round(w.numpy() * 127).astype(np.int8))
    w_out = torch.cat([torch.linspace(-1, 1, 9999), torch.tensor([50.0])])
    sp = weight_scale(w_out, "percentile", 99.9)
    assert sp < 2.0 / 127 and quantize_weights(w_out, sp)[-1] == 127  # the outlier clips
    with pytest.raises(InvalidArgument, match="scale_mode"):
        weight_scale(w, "median")  # type: ignore[arg-type]


def test_fake_quant_value_is_the_int8_grid_and_gradient_is_straight_through():
    torch.manual_seed(0)
    w = (torch.randn(200) * 0.3).requires_grad_()
    s = torch.tensor(0.3 / 127)
    units = fake_quant_units(w, s)
    np.testing.assert_array_equal(units.detach().numpy(), quantize_weights(w, s).astype(np.float32))
    g = torch.randn(200)
    (units * g).sum().backward()
    inside = (w.detach() / s).abs() <= 127
    torch.testing.assert_close(w.grad[inside], g[inside] / s)
    assert torch.all(w.grad[~inside] == 0) and (~inside).any()  # clipped weights get no gradient
    torch.testing.assert_close(fake_quant(w, s), units * s)


def test_thresholds_are_positive_and_low_stays_below():
    assert quantize_threshold(1.0, 0.01) == 100
    assert quantize_threshold(1e-6, 0.01) == 1
    assert quantize_threshold(1e6, 0.01) == 32767
    assert quantize_threshold_low(-1.0, 0.01, 100) == -100
    assert quantize_threshold_low(5.0, 0.01, 100) == 99
    assert quantize_threshold_low(-1e6, 0.01, 100) == -32768


def test_quantized_model_computes_in_integer_units():
    torch.manual_seed(0)
    model = SpikingCNN(scaled_architecture(NMNIST_PAPER, 0.25), neuron="leaky")
    for i in range(model.num_layers):
        w = model.weight_units(i, quantized=True)
        assert torch.equal(w, torch.round(w)) and w.abs().max() <= 127
        high, low = model.thresholds(i, quantized=True)
        assert high == int(high) >= 1 and low == int(low) < high
        leak = model.leak_units(i, quantized=True)
        assert leak is not None and torch.equal(leak, torch.round(leak))
    frames = torch.poisson(torch.full((2, 3, 2, 34, 34), 0.5))
    out = model(frames)
    assert torch.equal(out.spikes, torch.round(out.spikes)) and torch.equal(out.v_mem, torch.round(out.v_mem))
    assert out.v_mem.max() < out.threshold  # subtract reset: what is left is below threshold


def test_non_finite_weights_thresholds_and_leaks_are_refused_by_layer_never_exported():
    """A NaN cast to int8 is undefined (0 on the CPU) and inf clamps to 127: a diverged model
    must not reach the chip looking valid, at export or in cil-bptt's per-step update."""
    from chiploop.export import export_spec, updated_weights  # noqa: PLC0415

    torch.manual_seed(0)
    model = SpikingCNN(scaled_architecture(NMNIST_PAPER, 0.25), neuron="leaky")
    with torch.no_grad():
        model.convs[2].weight[0, 0, 0, 0] = float("nan")
    for export in (lambda: export_spec(model, bin_us=1000), lambda: updated_weights(model)):
        with pytest.raises(InvalidArgument, match=r"layers\[2\]\.weights: contain NaN or inf"):
            export()
    model = SpikingCNN(scaled_architecture(NMNIST_PAPER, 0.25), neuron="leaky")
    with torch.no_grad():
        model.leaks[1][0] = float("inf")
    with pytest.raises(InvalidArgument, match=r"layers\[1\]\.leak: contain NaN or inf"):
        updated_weights(model)
    model = SpikingCNN(scaled_architecture(NMNIST_PAPER, 0.25))
    model.theta[4] = float("nan")
    with pytest.raises(InvalidArgument, match=r"layers\[4\]\.threshold: .* not a finite number"):
        export_spec(model, bin_us=1000)
