"""Trained model -> the chip's ``NetworkSpec``, and ANN-to-SNN conversion with balancing.

The export reads the very quantities the quantized forward pass uses
(``chiploop.quant``), so the exported integer network is exactly the one QAT
simulates; it is validated against the chip's limits before it leaves.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from chiploop.architectures import NeuronKind
from chiploop.errors import InvalidArgument
from chiploop.limits import validate
from chiploop.models import ANNTwin, SpikingCNN
from chiploop.quant import quantize_leak, quantize_weights
from chiploop.spec import InputLayer, NetworkSpec


@dataclass(frozen=True)
class IntegerLayer:
    weights: np.ndarray  # int8 [f, c, ky, kx]
    threshold_high: int
    threshold_low: int
    leak: np.ndarray | None  # int16 [f], added once per bin


def check_chip_model(model: object) -> SpikingCNN:
    """``model`` if the chip can run it: a SpikingCNN (ann_to_snn makes one of an ANNTwin) whose
    convolutions have no bias (the chip has none: a leak is its closest thing)."""
    if not isinstance(model, SpikingCNN):
        hint = " (ann_to_snn converts an ANNTwin)" if isinstance(model, ANNTwin) else ""
        raise InvalidArgument("model", f"must be a chiploop.models.SpikingCNN{hint}, got {type(model).__name__}")
    model.check_no_bias()
    return model


def integer_layers(model: SpikingCNN) -> list[IntegerLayer]:
    """The integer parameters of every layer, exactly as the quantized forward uses them."""
    check_chip_model(model)
    layers = []
    for i, conv in enumerate(model.convs):
        high, low = model.thresholds(i, quantized=True)
        leak = None
        if model.leaks is not None:
            leak = quantize_leak(model.leaks[i] * model.theta[i].float(), model.scale[i], f"layers[{i}].leak")
        weights = quantize_weights(conv.weight, model.scale[i], f"layers[{i}].weights")
        layers.append(IntegerLayer(weights, int(high), int(low), leak))
    return layers


def export_spec(
    model: SpikingCNN,
    bin_us: int,
    input_layer: InputLayer | None = None,
    monitor: tuple[int, ...] = (),
) -> NetworkSpec:
    """The chip network of a (quantized) spiking CNN, validated against the chip's limits.

    bin_us: the readout bin width; leaky layers get it as their leak period, so
    the chip adds the leak once per bin as the synchronous model does.
    input_layer: the chip's input stage (``Architecture.spec``); by default a sensor of the
    model's input size. One whose output is not the model's input shape is refused.
    """
    layers = integer_layers(model)
    leaky = model.leaks is not None
    spec = model.arch.spec(
        weights=[q.weights for q in layers],
        thresholds=[q.threshold_high for q in layers],
        input_layer=input_layer,
        reset="subtract",
        leaks=[q.leak for q in layers] if leaky else None,
        leak_period_us=int(bin_us) if leaky else 0,
        monitor=monitor,
    )
    for i, q in enumerate(layers):
        spec = spec.with_layer(i, threshold_low=q.threshold_low)
    validate(spec)
    return spec


def updated_weights(model: SpikingCNN, layers: Iterable[int] | None = None) -> dict[int, np.ndarray | dict]:
    """The incremental update for ``ChipClient.update_weights`` (every layer by default):
    ``{layer: int8 weights}``, or ``{layer: {"weights": .., "leak": ..}}`` for leaky neurons
    (the leak is trained like a bias, so it moves with the weights)."""
    check_chip_model(model)
    idx = range(model.num_layers) if layers is None else layers
    out: dict[int, np.ndarray | dict] = {}
    for i in idx:
        w = quantize_weights(model.convs[i].weight, model.scale[i], f"layers[{i}].weights")
        if model.leaks is None:
            out[i] = w
        else:
            leak = quantize_leak(model.leaks[i] * model.theta[i].float(), model.scale[i], f"layers[{i}].leak")
            out[i] = {"weights": w, "leak": leak}
    return out


# ---------------------------------------------------------------- ANN-to-SNN conversion


@dataclass(frozen=True)
class Balance:
    """Data-based normalisation (Rueckauer et al. 2017): the given percentile of
    each layer's positive activations (lambdas) and of the input's positive counts.

    A layer's activation lambda_l is mapped to ``gain * input_lambda`` spikes, so
    every layer fires about as much as the input does; the SNN's output score
    (spikes + v/thr) times ``logit_per_unit`` approximates the ANN's logits.
    """

    lambdas: tuple[float, ...]
    input_lambda: float
    gain: float = 1.0

    def thetas(self) -> list[float]:
        """Per-layer float thresholds (in each layer's weight units)."""
        lam = self.lambdas
        return [lam[0] / (self.input_lambda * self.gain)] + [lam[i] / lam[i - 1] for i in range(1, len(lam))]

    @property
    def logit_per_unit(self) -> float:
        return self.lambdas[-1] / (self.input_lambda * self.gain)


@torch.no_grad()
def balance(
    ann: ANNTwin,
    frames: Iterable[torch.Tensor],
    percentile: float = 99.9,
    gain: float = 1.0,
    qat: bool = False,
) -> Balance:
    """Measure the activation percentiles on some batches of frames ([B, T, C, H, W] or [B, C, H, W])."""
    per_layer: list[list[np.ndarray]] = [[] for _ in range(ann.num_layers)]
    inputs = []
    for x in frames:
        x = x.sum(1) if x.dim() == 5 else x
        inputs.append(x[x > 0].cpu().numpy())
        logits, acts = ann(x, qat=qat, record=True)
        for i, a in enumerate(acts):
            per_layer[i].append(a[a > 0].cpu().numpy())
    if not inputs:
        raise InvalidArgument("frames", "balancing needs at least one batch")

    def pct(chunks: list[np.ndarray], name: str) -> float:
        v = np.concatenate(chunks) if chunks else np.zeros(0)
        if v.size == 0:
            raise InvalidArgument(name, "no positive activation on the balancing data (a dead layer)")
        return float(np.percentile(v, percentile))

    lambdas = tuple(pct(chunks, f"layers[{i}]") for i, chunks in enumerate(per_layer))
    return Balance(lambdas=lambdas, input_lambda=pct(inputs, "input"), gain=gain)


def ann_to_snn(
    ann: ANNTwin,
    bal: Balance,
    neuron: NeuronKind = "iaf",
    theta_low: float | None = None,
) -> SpikingCNN:
    """The spiking CNN with the ANN's weights, balanced thresholds and the ANN's quantizer grid.

    No low clamp by default: an integrate-and-fire neuron without one counts
    ReLU(total input) / threshold, the quantity the ANN computed on the summed frame.
    """
    snn = SpikingCNN(ann.arch, neuron=neuron, theta_low=theta_low, leak_init=0.0).to(ann.scale.device)
    with torch.no_grad():
        for dst, src in zip(snn.convs, ann.convs, strict=True):
            dst.weight.copy_(src.weight)
        snn.theta.copy_(torch.tensor(bal.thetas(), dtype=torch.float64))
        snn.scale.copy_(ann.scale)
    return snn
