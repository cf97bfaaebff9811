"""The paper's spiking CNN (sinabs, chip semantics) and its ANN twin.

Both are built from an ``chiploop.architectures.Architecture`` (default: the
paper's NMNIST_PAPER, 5 spiking convs + 1 fully connected, no biases), with
torch ``Conv2d(bias=False)`` and sinabs ``SumPool2d``; the spiking layers are
sinabs ``IAFSqueeze`` neurons with the chip's rules: multi-spike, subtract
reset, ``min_v_mem`` = threshold_low, int16 saturation once per time step.

Units: every layer computes in its own integer units (weights w / s_l, see
``chiploop.quant``), so with ``quantized=True`` the forward pass *is* the
integer network that ``chiploop.export`` sends to the chip, computed the way
the daemon's ``Readout(mode="sync")`` computes it.

Leaky neurons: the chip has no multiplicative decay; its leak is a per-channel
constant added every leak tick. The sync model adds the same constant
(``leak``, trained like a bias) once per time step, and the export sets the
chip's leak period to the bin width, so both add it once per bin.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from sinabs.layers import IAFSqueeze, SumPool2d
from torch import nn

from chiploop.architectures import (
    NEURON_KINDS,
    NMNIST_PAPER,
    READOUT_KINDS,
    Architecture,
    ConvStage,
    NeuronKind,
    ReadoutKind,
)
from chiploop.errors import InvalidArgument
from chiploop.quant import (
    STATE_MAX,
    STATE_MIN,
    fake_quant,
    fake_quant_leak_units,
    fake_quant_units,
    quantize_threshold,
    quantize_threshold_low,
    ste_round,
    weight_scale,
)


def scaled_architecture(arch: Architecture, width: float = 1.0) -> Architecture:
    """The same network with every hidden layer's channels multiplied by ``width``."""
    if width == 1.0:
        return arch
    if not 0 < width <= 4:
        raise InvalidArgument("width", f"must be in (0, 4], got {width}")
    stages = tuple(
        s if i == len(arch.stages) - 1 else replace(s, out_channels=max(1, round(s.out_channels * width)))
        for i, s in enumerate(arch.stages)
    )
    return Architecture(name=f"{arch.name}-w{width:g}", in_shape=arch.in_shape, stages=stages)


def leak_ticks(t0_us: int, bin_us: int, num_bins: int, period_us: int) -> list[int]:
    """Leak ticks inside each bin: the chip ticks at m * period (m >= 1), so with the period
    equal to the bin width and t0 = 0 the first bin has none and every later bin one."""
    out = []
    for b in range(num_bins):
        start, end = t0_us + b * bin_us, t0_us + (b + 1) * bin_us
        first = -(-max(start, 1) // period_us)
        last = (end - 1) // period_us
        out.append(max(0, last - first + 1))
    return out


def _conv(c_in: int, s: ConvStage) -> nn.Conv2d:
    return nn.Conv2d(c_in, s.out_channels, s.kernel, stride=s.stride, padding=s.padding, bias=False)


# ---------------------------------------------------------------- neuron rules


class ChipMultiSpike(torch.autograd.Function):
    """sinabs spike_fn: floor(v / thr) spikes where v >= thr, v saturated to int16 first.

    Backward: the surrogate of v (as sinabs' MultiSpike)."""

    required_states = ["v_mem"]

    @staticmethod
    def forward(ctx, v_mem, spike_threshold, surrogate_grad_fn):
        ctx.save_for_backward(v_mem)
        ctx.spike_threshold = spike_threshold
        ctx.surrogate_grad_fn = surrogate_grad_fn
        v = torch.clamp(v_mem, max=STATE_MAX)
        return (v >= spike_threshold) * torch.div(v, spike_threshold, rounding_mode="floor")

    @staticmethod
    def backward(ctx, grad_output):
        (v_mem,) = ctx.saved_tensors
        return grad_output * ctx.surrogate_grad_fn(v_mem, ctx.spike_threshold), None, None


@dataclass
class ChipSubtract:
    """sinabs reset_fn: v = min(v, 32767) - spikes * thr (the saturation of the same step)."""

    def __call__(self, spikes, state, spike_threshold):
        new_state = state.copy()
        new_state["v_mem"] = torch.clamp(state["v_mem"], max=STATE_MAX) - spikes * spike_threshold
        return new_state


@dataclass
class PeriodicExponential:
    """Weidel and Sheik's periodic exponential surrogate (sinabs' PeriodicExponential),
    with the width relative to the threshold and the height 1/thr, so the gradient
    does not depend on the units a layer computes in (integer units differ per layer)."""

    grad_width: float = 0.5
    grad_scale: float = 1.0

    def __call__(self, v_mem, spike_threshold):
        v = v_mem / spike_threshold
        periodic = (v - 0.5) - torch.floor(v - 0.5)
        distance = torch.where(v >= 1.0, 2.0 * periodic - 1.0, v - 1.0)
        return self.grad_scale * torch.exp(-torch.abs(distance) / self.grad_width) / spike_threshold


# ---------------------------------------------------------------- the spiking CNN


def readout_score(
    spikes: torch.Tensor, v_mem: torch.Tensor, threshold: float, readout: ReadoutKind = "charge"
) -> torch.Tensor:
    """The readout everywhere (software, chip, loss), [B, K], from per-bin spikes and
    membranes [B, T, K] of the output layer.

    ``charge`` (the default): total spikes plus the last membrane in threshold units.
    For the output layer (subtract reset, no low clamp) score * thr is the total
    charge it received, so the readout is exact, not rounded to whole spikes.
    ``counts``: total spikes alone, sinabs' usual readout (ties are frequent when
    few output spikes are fired; argmax then takes the first class).
    """
    total = spikes.sum(1)
    return total if readout == "counts" else total + v_mem[:, -1] / threshold


@dataclass
class SNNOutput:
    """What a forward pass of the spiking CNN gives (integer units)."""

    spikes: torch.Tensor  # [B, T, K] output-layer spikes per bin
    v_mem: torch.Tensor  # [B, T, K] output-layer membrane at the end of each bin
    threshold: float  # output-layer threshold_high, same units as v_mem
    hidden: list[torch.Tensor]  # per hidden layer: spikes [B, T, C, H, W] (before pooling)
    readout: ReadoutKind = "charge"  # the model's readout_score kind

    @staticmethod
    def concatenate(parts: list[SNNOutput]) -> SNNOutput:
        """Join the passes of consecutive parts of one batch (samples are independent)."""
        if len(parts) == 1:
            return parts[0]
        return replace(
            parts[0],
            spikes=torch.cat([p.spikes for p in parts]),
            v_mem=torch.cat([p.v_mem for p in parts]),
            hidden=[torch.cat(layer) for layer in zip(*(p.hidden for p in parts), strict=True)],
        )

    @property
    def score(self) -> torch.Tensor:
        """[B, K] ``readout_score`` of this pass."""
        return readout_score(self.spikes, self.v_mem, self.threshold, self.readout)


class _ConvStack(nn.Module):
    """What the SNN and its ANN twin share: ``convs`` and a per-layer weight ``scale`` buffer."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.arch = arch
        convs, c_in = [], arch.in_shape[0]
        for s in arch.stages:
            convs.append(_conv(c_in, s))
            c_in = s.out_channels
        self.convs = nn.ModuleList(convs)
        self.pools = nn.ModuleList([SumPool2d(s.pool) if s.pool > 1 else nn.Identity() for s in arch.stages])
        self.scale: torch.Tensor
        self.register_buffer("scale", torch.ones(len(convs), dtype=torch.float32))

    @property
    def num_layers(self) -> int:
        return len(self.convs)

    def check_input(self, shape: Sequence[int]) -> None:
        """Refuse input of another (C, H, W) than the architecture's (a sensor of another size, polarities
        merged or not), and a conv with a bias, before the convolutions meet either."""
        if tuple(shape) != self.arch.in_shape:
            raise InvalidArgument(
                "frames", f"{self.arch.name} takes (C, H, W) = {self.arch.in_shape} per bin, got {tuple(shape)}"
            )
        self.check_no_bias()

    def check_no_bias(self) -> None:
        """Refuse a conv with a bias (one swapped in): the forward passes and the export would
        ignore it, and the chip has none; a leak (neuron='leaky') is its closest thing."""
        for i, conv in enumerate(self.convs):
            if getattr(conv, "bias", None) is not None:
                raise InvalidArgument(
                    f"layers[{i}].bias", "the chip has no biases: build the conv with bias=False (neuron='leaky' trains a leak)"
                )

    @torch.no_grad()
    def calibrate_scales(self, mode: str = "max", percentile: float = 99.99) -> None:
        """Per-layer scale from the current weights (leaks share the layer's units)."""
        for i, conv in enumerate(self.convs):
            self.scale[i] = weight_scale(conv.weight, mode, percentile)  # type: ignore[arg-type]


#: float32 holds every whole number up to 2**24 exactly.
FLOAT32_EXACT = 2**24

#: The same bound on a GPU, where cuDNN may pick a Winograd convolution: its float32 transforms
#: err by up to 0.13 at a bound of 2**20.2, 0.38 at 2**22.2 and 1.4 at 2**23.8 (simulated F(4x4,
#: 3x3) on whole numbers), past what rounding removes. FFT convolutions stay under 0.06.
GPU_FLOAT32_EXACT = 2**20


def integer_conv(x: torch.Tensor, units: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """The chip's integer currents: whole inputs times int8 weight units, summed exactly.

    In float32 the sum is exact while no partial sum can pass 2**24 (2**20 on a GPU: see
    GPU_FLOAT32_EXACT); a layer whose bound
    (largest input times a kernel's sum of |weights|) reaches it, such as a hidden layer with a
    threshold of 1 firing thousands of spikes per bin, is summed in float64 instead (the chip
    sums in integers; the result, cast back, is exact wherever the 16-bit state does not
    saturate anyway). Rounding, straight-through, then removes what a GPU's FFT or Winograd
    convolution adds in rounding errors, which would flip spikes at the threshold."""
    if x.numel() == 0:
        bound = 0.0
    else:
        low, high = torch.aminmax(x.detach())
        bound = max(-float(low), float(high)) * float(units.detach().abs().sum(dim=(1, 2, 3)).amax())
    if bound < (FLOAT32_EXACT if x.device.type == "cpu" else GPU_FLOAT32_EXACT):
        current = F.conv2d(x, units, stride=conv.stride, padding=conv.padding)
    else:
        current = F.conv2d(x.double(), units.double(), stride=conv.stride, padding=conv.padding).to(x.dtype)
    return ste_round(current)


class SpikingCNN(_ConvStack):
    """The paper's spiking CNN with the chip's neuron rules (see the module doc).

    Per layer l: float threshold ``theta[l]`` (weight units), quantization scale
    ``scale[l]`` (frozen between calls of ``calibrate_scales``), optional leak
    (leaky neurons). Hidden layers clamp at threshold_low = ``theta_low`` * thr
    (default ``theta_low=None``: no clamp, threshold_low = -32768: the chip clamps
    per event and the binned model per bin, so a clamp is a mismatch between them);
    the output layer does not clamp (threshold_low = -32768) so its membrane keeps
    the whole charge for the readout. ``readout``: see ``readout_score``.
    """

    def __init__(
        self,
        arch: Architecture = NMNIST_PAPER,
        neuron: NeuronKind = "iaf",
        theta_low: float | None = None,
        leak_init: float = -0.05,
        surrogate: PeriodicExponential | None = None,
        readout: ReadoutKind = "charge",
    ) -> None:
        if neuron not in NEURON_KINDS:
            raise InvalidArgument("neuron", f"must be one of {NEURON_KINDS}, got {neuron!r}")
        if readout not in READOUT_KINDS:
            raise InvalidArgument("readout", f"must be one of {READOUT_KINDS}, got {readout!r}")
        if theta_low is not None and not theta_low < 1.0:
            raise InvalidArgument("theta_low", f"must be below the threshold (1.0), got {theta_low}")
        super().__init__(arch)
        self.neuron = neuron
        self.readout: ReadoutKind = readout
        self.theta_low = None if theta_low is None else float(theta_low)
        n = len(arch.stages)
        sur = surrogate or PeriodicExponential()
        self.spiking = nn.ModuleList(
            [
                IAFSqueeze(
                    num_timesteps=1,
                    spike_fn=ChipMultiSpike,
                    reset_fn=ChipSubtract(),
                    surrogate_grad_fn=sur,
                    min_v_mem=float(STATE_MIN),
                    record_states=(i == n - 1),
                )
                for i in range(n)
            ]
        )
        self.register_buffer("theta", torch.ones(n, dtype=torch.float64))
        if neuron == "leaky":
            self.leaks = nn.ParameterList(
                [nn.Parameter(torch.full((s.out_channels,), float(leak_init))) for s in arch.stages]
            )
        else:
            self.leaks = None
        self.calibrate_scales()


    def thresholds(self, i: int, quantized: bool) -> tuple[float, float]:
        """(threshold_high, threshold_low) of layer i in its integer units."""
        s = float(self.scale[i])
        theta = float(self.theta[i])
        clamp = self.theta_low is not None and i < self.num_layers - 1  # the output layer never clamps
        if quantized:
            high = quantize_threshold(theta, s, f"layers[{i}].threshold")
            low = quantize_threshold_low(self.theta_low * theta, s, high, f"layers[{i}].threshold_low") if clamp else STATE_MIN
            return float(high), float(low)
        return theta / s, max(self.theta_low * theta / s, float(STATE_MIN)) if clamp else float(STATE_MIN)

    def weight_units(self, i: int, quantized: bool) -> torch.Tensor:
        w = self.convs[i].weight
        return fake_quant_units(w, self.scale[i]) if quantized else w / self.scale[i]

    def leak_units(self, i: int, quantized: bool) -> torch.Tensor | None:
        if self.leaks is None:
            return None
        b = self.leaks[i] * self.theta[i].float()  # leak_init and the parameter are in units of theta
        return fake_quant_leak_units(b, self.scale[i]) if quantized else b / self.scale[i]

    def reset_states(self) -> None:
        for layer in self.spiking:
            for name, _ in list(layer.named_buffers()):
                # sinabs sizes a state on the device its empty buffer lives on.
                layer.register_buffer(name, torch.zeros(0, device=self.scale.device))

    # Neuron states belong to the last batch, not to the model: checkpoints hold them empty.
    def state_dict(self, *args, **kwargs):
        self.reset_states()
        return super().state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, *args, **kwargs):
        self.reset_states()
        states = {f"spiking.{i}.{name}" for i, layer in enumerate(self.spiking) for name, _ in layer.named_buffers()}
        cleaned = {k: (torch.zeros(0, device=self.scale.device) if k in states else v) for k, v in state_dict.items()}
        return super().load_state_dict(cleaned, *args, **kwargs)

    def forward(
        self,
        frames: torch.Tensor,
        quantized: bool = True,
        chip_spikes: Mapping[int, torch.Tensor] | Callable[[], Mapping[int, torch.Tensor]] | None = None,
        ticks: list[int] | None = None,
    ) -> SNNOutput:
        """frames: [B, T, C, H, W] event counts per bin.

        ticks: leak ticks in each bin (``leak_ticks``), leaky neurons only; by default what the
        exported network does with bins from t = 0 (export sets the leak period to the bin width,
        so the first bin has no tick and every later bin one).

        chip_spikes: per layer, spike counts [B, T, C, H, W] measured on the chip;
        they replace that layer's spikes in the forward (straight-through: the
        value is the chip's, the gradient the sync graph's). A function returning
        them is called once the first layer's neurons have run, so a caller can
        wait for the chip there and layer 0 overlaps with the chip's run.
        """
        if frames.dim() != 5:
            raise InvalidArgument("frames", f"must be [B, T, C, H, W], got shape {tuple(frames.shape)}")
        self.check_input(frames.shape[2:])
        batch, steps = frames.shape[:2]
        if ticks is None:
            ticks = leak_ticks(0, 1, steps, 1)
        elif len(ticks) != steps:
            raise InvalidArgument("ticks", f"one count per bin: frames have {steps} bins, ticks {len(ticks)}")
        self.reset_states()
        x = frames.reshape(batch * steps, *frames.shape[2:])
        hidden: list[torch.Tensor] = []
        v_out = spikes = None
        for i, (conv, iaf, pool) in enumerate(zip(self.convs, self.spiking, self.pools, strict=True)):
            if quantized:
                current = integer_conv(x, self.weight_units(i, quantized), conv)
            else:
                current = F.conv2d(x, self.weight_units(i, quantized), stride=conv.stride, padding=conv.padding)
            leak = self.leak_units(i, quantized)
            if leak is not None:
                per_step = torch.tensor(ticks, dtype=current.dtype, device=current.device)
                current = current + leak.view(1, -1, 1, 1) * per_step.repeat(batch).view(-1, 1, 1, 1)
            high, low = self.thresholds(i, quantized)
            iaf.num_timesteps = steps
            iaf.spike_threshold.data = torch.tensor(high, device=current.device)
            iaf.min_v_mem.data = torch.tensor(low, device=current.device)
            spikes = iaf(current)
            if callable(chip_spikes):
                chip_spikes = chip_spikes()
            if chip_spikes is not None and i in chip_spikes:
                chip = chip_spikes[i]
                if tuple(chip.shape) != (batch, steps, *spikes.shape[1:]):
                    raise InvalidArgument(
                        f"chip_spikes[{i}]",
                        f"shape {tuple(chip.shape)} is not the layer's {(batch, steps, *spikes.shape[1:])} [B, T, C, H, W]",
                    )
                spikes = spikes + (chip.reshape(spikes.shape).to(spikes.dtype) - spikes).detach()
            if i < self.num_layers - 1:
                hidden.append(spikes.reshape(batch, steps, *spikes.shape[1:]))
            else:
                v_out = iaf.recordings["v_mem"]
            x = pool(spikes)
        assert spikes is not None and v_out is not None
        return SNNOutput(
            spikes=spikes.reshape(batch, steps, -1),
            v_mem=v_out.reshape(batch, steps, -1),
            threshold=self.thresholds(self.num_layers - 1, quantized)[0],
            hidden=hidden,
            readout=self.readout,
        )


# ---------------------------------------------------------------- the ANN twin


class ANNTwin(_ConvStack):
    """The same convolutions with ReLU (and the same sum pooling), on frames summed over time.

    With ``qat=True`` the weights are fake-quantized with the per-layer scales
    (int8 grid, straight-through), the grid the converted SNN is exported on.
    """

    def __init__(self, arch: Architecture = NMNIST_PAPER) -> None:
        super().__init__(arch)
        self.calibrate_scales()

    def forward(self, x: torch.Tensor, qat: bool = False, record: bool = False):
        """x: [B, C, H, W] (or [B, T, C, H, W], summed over T). Returns logits [B, K]
        (and with record=True also the list of every layer's activation before pooling)."""
        if x.dim() == 5:
            x = x.sum(1)
        if x.dim() != 4:
            raise InvalidArgument("x", f"must be [B, C, H, W] or [B, T, C, H, W], got shape {tuple(x.shape)}")
        self.check_input(x.shape[1:])
        acts = []
        for i, (conv, pool) in enumerate(zip(self.convs, self.pools, strict=True)):
            w = fake_quant(conv.weight, self.scale[i]) if qat else conv.weight
            x = F.conv2d(x, w, stride=conv.stride, padding=conv.padding)
            if i < self.num_layers - 1:
                x = F.relu(x)
            if record:
                acts.append(x)
            x = pool(x)
        logits = x.flatten(1)
        return (logits, acts) if record else logits


@torch.no_grad()
def data_init(
    model: SpikingCNN,
    frames: torch.Tensor,
    target: float = 2.0,
    percentile: float = 99.0,
    ticks: list[int] | None = None,
) -> None:
    """Rescale each layer's weights, first to last, so the given percentile of its positive
    input current per bin is ``target`` thresholds (a layer-sequential data-driven init,
    as LSUV does for ANNs: no layer starts silent or saturated). ``ticks``: the leak ticks per
    bin the model trains with (``SpikingCNN.forward``)."""
    for i in range(model.num_layers):
        model.calibrate_scales()
        model.reset_states()
        captured: dict[str, torch.Tensor] = {}
        conv = model.convs[i]
        hook = model.spiking[i].register_forward_pre_hook(
            lambda _m, args, store=captured: store.setdefault("i", args[0])
        )
        try:
            model(frames, quantized=False, ticks=ticks)
        finally:
            hook.remove()
        current = captured["i"]
        positive = current[current > 0]
        if positive.numel() == 0:
            continue
        level = torch.quantile(positive[:1_000_000].float(), percentile / 100.0).item()
        theta_units = float(model.theta[i]) / float(model.scale[i])
        conv.weight.mul_(target * theta_units / level)
    model.calibrate_scales()
