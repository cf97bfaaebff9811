"""The training methods, each selectable by name (``METHODS[name](config)``).

- ``cnn``: the ANN twin on frames summed over time, float; converted to the SNN
  (balanced thresholds, int8 on the ANN's grid) for the chip after training.
- ``cnn-qat``: the same with the weights fake-quantized (int8 STE) in training.
- ``bptt``: the spiking CNN over T bins, surrogate gradients, QAT (the forward
  is the exported integer network); with ``qat=False`` trained in float and
  quantized after training (sinabs' usual route to the chip).
- ``cil-bptt``: bptt, but every iteration runs the batch on the chip and the
  chip's per-bin output spikes and membranes (and, by default, every hidden
  layer's spikes) replace the sync model's in the forward, straight-through;
  the new int8 weights are pushed (``update_weights``) before the next one.
- ``cil-ann``: cnn-qat, but the chip's output score (spikes + v/thr, times the
  conversion's logit scale) replaces the ANN's logits in the loss, straight-through.

docs/training.md says exactly how each substitution is done and why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from chiploop.architectures import NMNIST_PAPER, Architecture
from chiploop.data.loader import Batch
from chiploop.export import Balance, ann_to_snn, balance, export_spec, updated_weights
from chiploop.models import (
    ANNTwin,
    PeriodicExponential,
    SNNOutput,
    SpikingCNN,
    data_init,
    leak_ticks,
    readout_score,
    scaled_architecture,
)
from chiploop.run import Readout, RunResult
from chiploop.spec import InputLayer, NetworkSpec
from chiploop.training.chip import Chip, contiguous_spans
from chiploop.training.config import TrainConfig
from chiploop.training.device import resolve_device
from chiploop.training.substitute import (
    align_to_logits,
    chip_hidden_spikes,
    chip_outputs,
    chip_score,
    straight_through,
)


@dataclass
class StepResult:
    loss: float
    correct: int
    n: int
    chip_wait_s: float = 0.0  # time spent waiting for the chip after the sync forward


class Method:
    """Common interface. ``chip_in_loop``: needs the chip in every training step."""

    name = ""
    chip_in_loop = False
    #: Whether training runs the weights on the int8 grid (QAT); if not, the grid follows them at export.
    trains_quantized = True

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer

    def __init__(
        self, cfg: TrainConfig, readout: Readout, arch: Architecture | None = None, input_layer: InputLayer | None = None
    ) -> None:
        """arch: the network (default the paper's), its hidden layers scaled by ``cfg.width``;
        input_layer: the chip's input stage for it (``export_spec``)."""
        self.cfg = cfg
        self.readout = readout
        self.arch = scaled_architecture(NMNIST_PAPER if arch is None else arch, cfg.width)
        #: What the chip's input stage passes to layer 0: bin the method's frames with it.
        self.input_layer = self.arch.default_input_layer() if input_layer is None else input_layer
        self.device = resolve_device(cfg.device)
        cfg.check_hidden(len(self.arch.stages))

    @property
    def num_classes(self) -> int:
        return self.arch.stages[-1].out_channels

    def tensor(self, array: np.ndarray) -> torch.Tensor:
        """A batch's frames or labels on the training device."""
        return torch.from_numpy(array).to(self.device)

    # --- lifecycle
    def setup(self, calibration: torch.Tensor) -> None:
        raise NotImplementedError

    def start_epoch(self, epoch: int, calibration: torch.Tensor, chip: Chip | None, resumed: bool = False) -> None:
        """Fix what holds for the epoch (scales, the ANN routes' conversion) and put it on the chip.
        ``resumed``: the epoch began before a checkpoint, whose state holds what it fixed."""
        # Scales (hence int thresholds) move once per epoch; within it only weights change.
        if not resumed:
            self.model.calibrate_scales(self.cfg.scale_mode)

    def loss_and_score(self, batch: Batch, chip: Chip | None) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(loss, the [B, K] scores it was computed on, seconds waited for the chip)."""
        raise NotImplementedError

    def step(self, batch: Batch, chip: Chip | None) -> StepResult:
        """One optimiser step on the batch, then ``after_step`` (a chip-in-loop method pushes its weights)."""
        self.model.train()
        batch.check_labels(self.num_classes)
        loss, score, waited = self.loss_and_score(batch, chip)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.after_step(chip)
        correct = int((score.detach().argmax(1).cpu().numpy() == batch.labels).sum())
        return StepResult(loss.item(), correct, len(batch), waited)

    def after_step(self, chip: Chip | None) -> None:
        pass

    def set_learning_rate(self, epoch: int) -> float:
        """Cosine decay over the run's epochs (stateless: a resumed run gets the same rate)."""
        lr = self.cfg.lr
        if self.cfg.lr_schedule == "cosine":
            lr *= 0.5 * (1.0 + math.cos(math.pi * epoch / self.cfg.epochs))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    # --- what is evaluated
    def snn(self) -> SpikingCNN:
        """The spiking network that goes to the chip (for ANN routes: the converted one)."""
        raise NotImplementedError

    @torch.no_grad()
    def software_scores(self, frames: torch.Tensor) -> torch.Tensor:
        """The trained model's own output in software (the ANN for ANN routes, the int SNN otherwise)."""
        raise NotImplementedError

    def prepare_export(self, calibration: torch.Tensor) -> None:
        """Bring the chip network up to date with the weights before evaluating it. Weights trained
        in float outgrow the grid fixed at the epoch's start: post-training quantization gives them
        their own, so export clips nothing."""
        if not self.trains_quantized:
            self.model.calibrate_scales(self.cfg.scale_mode)

    def spec(self) -> NetworkSpec:
        return export_spec(self.snn(), self.readout.bin_us, input_layer=self.input_layer)

    def loop_spec(self) -> NetworkSpec:
        """The spec the chip runs inside the training loop: ``spec()`` plus what the method monitors."""
        return self.spec()

    @property
    def ticks(self) -> list[int]:
        r = self.readout
        return leak_ticks(r.t0_us, r.bin_us, r.num_bins, r.bin_us)

    @property
    def chip_readout(self) -> Readout:
        """What a chip run returns: the output layer's spikes per bin, and its membranes when the
        readout reads them. The counts readout never does, so a backend that cannot snapshot
        membranes (the Speck board, for now) can run it."""
        snn = self.snn()
        membranes = (snn.num_layers - 1,) if snn.readout == "charge" else ()
        return replace(self.readout, membrane_layers=membranes)

    # --- checkpoints
    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------- SNN routes


class BPTT(Method):
    name = "bptt"

    def __init__(
        self, cfg: TrainConfig, readout: Readout, arch: Architecture | None = None, input_layer: InputLayer | None = None
    ) -> None:
        super().__init__(cfg, readout, arch, input_layer)
        surrogate = PeriodicExponential(grad_width=cfg.surrogate_width)
        self.model = SpikingCNN(
            self.arch, neuron=cfg.neuron, theta_low=cfg.theta_low, surrogate=surrogate, readout=cfg.readout  # type: ignore[arg-type]
        )
        self.model.to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)

    @property
    def trains_quantized(self) -> bool:
        """Whether the training forward is the integer network (``qat``; cil-bptt's proxy always is)."""
        return self.cfg.qat

    def setup(self, calibration: torch.Tensor) -> None:
        if self.cfg.init_target is not None:  # None: torch's default init
            data_init(self.model, calibration, target=self.cfg.init_target, ticks=self.ticks)

    def snn(self) -> SpikingCNN:
        return self.model

    @torch.no_grad()
    def software_scores(self, frames: torch.Tensor) -> torch.Tensor:
        return self.model(frames, quantized=True, ticks=self.ticks).score

    def loss_and_score(self, batch: Batch, chip: Chip | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
        out = self.model(self.tensor(batch.frames), quantized=self.trains_quantized, ticks=self.ticks)
        return F.cross_entropy(out.score, self.tensor(batch.labels)), out.score, 0.0

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


#: cil-bptt with hidden substitution: parts a batch goes to the chip in (see ``loss_and_score``).
HIDDEN_PIPELINE_PARTS = 2


class CILBPTT(BPTT):
    """bptt with the chip in the loop (CIL-SPL).

    Per iteration: the chip runs the batch (started first, asynchronously) while
    the sync model runs its forward; the chip's spikes of the substituted hidden
    layers (every one by default) replace the sync model's inside the forward,
    and its per-bin output spikes and membranes after it (straight-through); the
    loss is computed on the chip's values, the gradient flows through the sync
    graph; the new int8 weights are pushed to the chip before the next iteration.
    """

    name = "cil-bptt"
    chip_in_loop = True
    in_loop = True  # False during the first ``pretrain_epochs`` (plain bptt)
    trains_quantized = True  # the proxy must compute the network the chip runs
    deployed: NetworkSpec | None = None  # the loop's spec as deployed this epoch (its shapes bin the events)

    def start_epoch(self, epoch: int, calibration: torch.Tensor, chip: Chip | None, resumed: bool = False) -> None:
        super().start_epoch(epoch, calibration, chip, resumed)
        self.in_loop = epoch >= self.cfg.pretrain_epochs
        if not self.in_loop:
            return
        assert chip is not None, "cil-bptt needs a chip"
        # New scales change the int thresholds: a full deploy (weights alone go incrementally).
        self.deployed = self.loop_spec()
        chip.deploy(self.deployed)

    def loop_spec(self) -> NetworkSpec:
        return export_spec(
            self.model, self.readout.bin_us, input_layer=self.input_layer, monitor=tuple(self.cfg.substitute_hidden)
        )

    def loss_and_score(self, batch: Batch, chip: Chip | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
        if not self.in_loop:
            return super().loss_and_score(batch, chip)
        assert chip is not None, "cil-bptt needs a chip"
        hidden = self.cfg.substitute_hidden
        # The chip works while torch does. With hidden layers substituted the forward needs the
        # chip's spikes, so the batch goes in parts: torch runs part k while the chip runs part k+1
        # (samples are independent, so the parts' outputs together are the batch's).
        spans = contiguous_spans(len(batch), HIDDEN_PIPELINE_PARTS if hidden else 1)
        runs = [chip.run_async(batch.events[a:b], self.chip_readout) for a, b in spans]
        frames = self.tensor(batch.frames)
        outs = []
        for (a, b), run in zip(spans, runs, strict=True):
            chip_spikes = (lambda run=run: self._chip_hidden(run.result())) if hidden else None
            outs.append(self.model(frames[a:b], quantized=True, ticks=self.ticks, chip_spikes=chip_spikes))
        out = SNNOutput.concatenate(outs)
        # Part by part: joining the parts' results would copy every monitored event for nothing.
        chip_parts = [chip_outputs(run.result(), self.model.num_layers - 1) for run in runs]
        spikes_chip, v_chip = (torch.cat(values) for values in zip(*chip_parts, strict=True))
        spikes = straight_through(out.spikes, spikes_chip)
        v_mem = straight_through(out.v_mem, v_chip)
        score = readout_score(spikes, v_mem, out.threshold, out.readout)
        return F.cross_entropy(score, self.tensor(batch.labels)), score.detach(), sum(run.waited_s for run in runs)

    def _chip_hidden(self, result: RunResult) -> dict[int, torch.Tensor]:
        # Monitored hidden layers come back as events, counted per neuron here: that ships far
        # less than the daemon's spatial counts would (int32 per neuron and bin).
        spikes = chip_hidden_spikes(self.deployed, result, self.chip_readout, self.cfg.substitute_hidden)
        return {i: c.to(self.device) for i, c in spikes.items()}

    def after_step(self, chip: Chip | None) -> None:
        if self.in_loop:
            assert chip is not None
            chip.update_weights(updated_weights(self.model))


# ---------------------------------------------------------------- ANN routes


class CNN(Method):
    """The ANN twin on frames summed over the bins; converted for the chip."""

    name = "cnn"
    qat = False

    def __init__(
        self, cfg: TrainConfig, readout: Readout, arch: Architecture | None = None, input_layer: InputLayer | None = None
    ) -> None:
        super().__init__(cfg, readout, arch, input_layer)
        self.model = ANNTwin(self.arch).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.balance: Balance | None = None
        self._snn: SpikingCNN | None = None

    def setup(self, calibration: torch.Tensor) -> None:
        pass  # torch's default init suits the ANN

    def convert(self, calibration: torch.Tensor) -> None:
        chunks = torch.split(calibration, 64)
        self.balance = balance(
            self.model, chunks, self.cfg.balance_percentile, self.cfg.balance_gain, qat=self.qat
        )
        self._snn = ann_to_snn(self.model, self.balance)

    @property
    def trains_quantized(self) -> bool:
        return self.qat

    def prepare_export(self, calibration: torch.Tensor) -> None:
        super().prepare_export(calibration)  # the grid, for plain cnn
        self.convert(calibration)  # the usual conversion step: balance on the trained weights

    def snn(self) -> SpikingCNN:
        if self._snn is None:
            raise RuntimeError("convert() first: the SNN of an ANN route comes from balancing")
        return self._snn

    @torch.no_grad()
    def software_scores(self, frames: torch.Tensor) -> torch.Tensor:
        return self.model(frames, qat=self.qat)

    def logits(self, batch: Batch, chip: Chip | None) -> tuple[torch.Tensor, torch.Tensor, float]:
        logits = self.model(self.tensor(batch.frames), qat=self.qat)
        return logits, logits, 0.0

    def loss_and_score(self, batch: Batch, chip: Chip | None) -> tuple[torch.Tensor, torch.Tensor, float]:
        used, _, waited = self.logits(batch, chip)
        return F.cross_entropy(used, self.tensor(batch.labels)), used, waited

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "balance": None if self.balance is None else self.balance.__dict__,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("balance"):
            b = state["balance"]
            self.balance = Balance(tuple(b["lambdas"]), b["input_lambda"], b["gain"])
            self._snn = ann_to_snn(self.model, self.balance)


class CNNQAT(CNN):
    name = "cnn-qat"
    qat = True


class CILANN(CNNQAT):
    """cnn-qat with the chip in the loop: the chip's score, in logit units, replaces the logits.

    The conversion (balanced thresholds, int8 grid) is fixed at the start of each
    epoch (a full deploy); every iteration pushes the new int8 weights.
    """

    name = "cil-ann"
    chip_in_loop = True
    in_loop = True  # False during the first ``pretrain_epochs`` (plain cnn-qat)

    def start_epoch(self, epoch: int, calibration: torch.Tensor, chip: Chip | None, resumed: bool = False) -> None:
        super().start_epoch(epoch, calibration, chip, resumed)
        self.in_loop = epoch >= self.cfg.pretrain_epochs
        if not resumed:  # else load_state_dict rebuilt the epoch's conversion from its balance
            self.convert(calibration)
        if self.in_loop:
            assert chip is not None, "cil-ann needs a chip"
            chip.deploy(self.loop_spec())

    def prepare_export(self, calibration: torch.Tensor) -> None:
        # Keep the thresholds the weights were trained against in the loop; only the weights moved.
        if self._snn is None:
            self.convert(calibration)
            return
        with torch.no_grad():
            for dst, src in zip(self._snn.convs, self.model.convs, strict=True):
                dst.weight.copy_(src.weight)

    def logits(self, batch: Batch, chip: Chip | None) -> tuple[torch.Tensor, torch.Tensor, float]:
        if not self.in_loop:
            return super().logits(batch, chip)
        assert chip is not None and self.balance is not None
        pending = chip.run_async(batch.events, self.chip_readout)
        logits = self.model(self.tensor(batch.frames), qat=True)
        result = pending.result()
        snn = self.snn()
        out_thr = snn.thresholds(snn.num_layers - 1, quantized=True)[0]
        score = chip_score(result, snn.num_layers - 1, out_thr, snn.readout)
        chip_logits = align_to_logits(score, self.balance.logit_per_unit)
        return straight_through(logits, chip_logits), logits, pending.waited_s

    def after_step(self, chip: Chip | None) -> None:
        if not self.in_loop:
            return
        assert chip is not None
        with torch.no_grad():
            for dst, src in zip(self.snn().convs, self.model.convs, strict=True):
                dst.weight.copy_(src.weight)
        chip.update_weights(updated_weights(self.snn()))


METHODS: dict[str, type[Method]] = {m.name: m for m in (CNN, CNNQAT, BPTT, CILBPTT, CILANN)}


def make_method(
    cfg: TrainConfig, readout: Readout, arch: Architecture | None = None, input_layer: InputLayer | None = None
) -> Method:
    """The method ``cfg.method`` on ``arch`` (default: the paper's network) for the chip input
    ``input_layer`` (default: a sensor of the network's input size)."""
    cfg.check(len((NMNIST_PAPER if arch is None else arch).stages))
    return METHODS[cfg.method](cfg, readout, arch, input_layer)
