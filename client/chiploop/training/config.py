"""Everything a training run is: one dataclass, saved in every checkpoint."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields, replace

from chiploop.architectures import NEURON_KINDS, NMNIST_PAPER, READOUT_KINDS
from chiploop.data.split import check_fold
from chiploop.errors import InvalidArgument, check_int
from chiploop.events import MAX_TIME_US

METHOD_NAMES: tuple[str, ...] = ("cnn", "cnn-qat", "bptt", "cil-bptt", "cil-ann")
#: Methods that train the same model, so one can start from another's checkpoint (``init_from``).
METHOD_FAMILIES: tuple[tuple[str, ...], ...] = (("bptt", "cil-bptt"), ("cnn", "cnn-qat", "cil-ann"))
#: The paper network's hidden spiking layers (all but the output layer): what cil-bptt substitutes
#: by default (a network of one's own names its own: ``substitute_hidden``).
HIDDEN_LAYERS: tuple[int, ...] = tuple(range(len(NMNIST_PAPER.stages) - 1))


#: Options that only some methods use (the ANN routes convert with their own settings; only bptt
#: may train in float; only the chip-in-loop methods warm up without the chip). ``train`` refuses
#: one given to a method that would ignore it; ``experiment`` applies each to the methods it concerns.
OPTION_METHODS: dict[str, tuple[str, ...]] = {
    "neuron": ("bptt", "cil-bptt"),
    "theta_low": ("bptt", "cil-bptt"),
    "readout": ("bptt", "cil-bptt"),
    "init_target": ("bptt", "cil-bptt"),
    "surrogate_width": ("bptt", "cil-bptt"),
    "qat": ("bptt",),
    "pretrain_epochs": ("cil-bptt", "cil-ann"),
}

#: Seeds numpy and torch both take.
MAX_SEED = 2**32 - 1


def method_family(method: str) -> tuple[str, ...]:
    """The methods whose checkpoints hold the same model as ``method``'s."""
    return next(f for f in METHOD_FAMILIES if method in f)


@dataclass
class TrainConfig:
    method: str = "cil-bptt"
    data: str | None = None  # folder (bundled or full N-MNIST layout); None: default_data_dir()
    tonic: bool = False  # read ``data`` through tonic.datasets.NMNIST (never downloads)
    out: str = "runs/train"
    chip: tuple[str, ...] = ()  # daemon addresses; empty: a local daemon with the simulator
    chip_workers: int = 1  # workers of the local daemon
    torch_threads: int = 1
    device: str = "auto"  # where torch trains: auto (a CUDA GPU if there is one) | cpu | cuda[:N]
    seed: int = 0
    epochs: int = 8
    batch_size: int = 64
    bins: int = 5
    duration_us: int = 320_000  # N-MNIST samples last ~300 ms (three saccades)
    val_fraction: float = 0.2
    fold: int = 0  # which validation block of the seeded split (0..num_folds-1): k-fold cross-validation
    max_train: int | None = None  # subsets, for quick runs and tests
    max_val: int | None = None
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # cosine | constant (per epoch)
    width: float = 1.0  # channel multiplier of the hidden layers (1.0: the paper's network)
    neuron: str = "iaf"  # iaf | leaky
    # The SNN routes' recipe (bptt, cil-bptt; the ANN routes convert with their own settings).
    # sinabs' usual recipe for Speck is readout="counts", qat=False, init_target=None, theta_low=-1.
    theta_low: float | None = None  # hidden threshold_low, in thresholds; None: no clamp (-32768)
    readout: str = "charge"  # charge: spikes + last membrane / thr | counts: spikes alone
    qat: bool = True  # bptt trains the integer network; False: float, quantized after training
    surrogate_width: float = 0.5  # width of the periodic exponential surrogate, in thresholds
    augment: bool = False
    shift: int = 2
    drop: float = 0.1
    init_target: float | None = 2.0  # data init: 99th-percentile input current per bin, in thresholds; None: torch's
    scale_mode: str = "max"  # weight scale per layer: max | percentile
    balance_percentile: float = 99.9  # ANN-to-SNN data-based normalisation
    balance_gain: float = 1.0
    calibration_samples: int = 256  # training samples used for init and balancing
    pretrain_epochs: int = 0  # cil-*: the first epochs without the chip in the loop (software warm start)
    init_from: str | None = None  # a checkpoint of the same model family to start from instead of the init
    # cil-bptt: hidden layers whose spikes are also the chip's; None: the method's default, every hidden
    # layer for cil-bptt (the best setting over 3 seeds' 5-fold CV, docs/training.md), none for the rest.
    substitute_hidden: tuple[int, ...] | None = None
    chip_eval: bool = True  # measure validation accuracy on the chip after every epoch
    time_limit_s: float | None = None  # stop after the epoch that passes it
    # A checkpoint inside an epoch too, at most this often (0: after every batch): on the full data
    # set an epoch is many minutes, and a preempted run resumes from the last one, mid-epoch.
    checkpoint_every_s: float = 600.0
    resume: bool = False
    overwrite: bool = False  # train into an ``out`` that holds a run, replacing it (else refused)
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def check(self, num_layers: int = len(NMNIST_PAPER.stages)) -> TrainConfig:
        """Refuse settings that cannot run (by name); ``num_layers``: the network's, when it is
        not the paper's (which layers cil-bptt may substitute)."""
        if self.method not in METHOD_NAMES:
            raise InvalidArgument("method", f"must be one of {', '.join(METHOD_NAMES)}, got {self.method!r}")
        check_int(self.seed, "seed", 0, MAX_SEED)
        if self.data is not None:  # recorded in config.json: eval may run from another folder
            self.data = os.path.abspath(os.path.expanduser(self.data))
        positive = ("epochs", "batch_size", "bins", "duration_us", "chip_workers", "torch_threads", "calibration_samples")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise InvalidArgument(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("max_train", "max_val"):  # None: all of the split
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise InvalidArgument(name, f"must be >= 1 (or unset: the whole split), got {getattr(self, name)}")
        if self.pretrain_epochs < 0:
            raise InvalidArgument("pretrain_epochs", f"must be >= 0, got {self.pretrain_epochs}")
        if self.substitute_hidden is None:
            self.substitute_hidden = tuple(range(num_layers - 1)) if self.method == "cil-bptt" else ()
        self.check_hidden(num_layers)
        if self.substitute_hidden and self.method != "cil-bptt":
            raise InvalidArgument("substitute_hidden", f"only cil-bptt substitutes hidden layers, not {self.method}")
        if not 0 < self.surrogate_width < math.inf:
            raise InvalidArgument("surrogate_width", f"must be > 0, got {self.surrogate_width}")
        if self.init_target is not None and not 0 < self.init_target < math.inf:
            raise InvalidArgument("init_target", f"must be > 0 (or none: torch's default init), got {self.init_target}")
        if self.readout not in READOUT_KINDS:
            raise InvalidArgument("readout", f"must be one of {', '.join(READOUT_KINDS)}, got {self.readout!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise InvalidArgument("val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        check_fold(self.fold, self.val_fraction)
        if self.neuron not in NEURON_KINDS:
            raise InvalidArgument("neuron", f"must be one of {', '.join(NEURON_KINDS)}, got {self.neuron!r}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise InvalidArgument("lr_schedule", f"must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        if not 0 <= self.checkpoint_every_s < math.inf:
            raise InvalidArgument("checkpoint_every_s", f"must be >= 0 and finite, got {self.checkpoint_every_s}")
        if not 0 < self.lr < math.inf:
            raise InvalidArgument("lr", f"must be > 0, got {self.lr}")
        if self.duration_us < self.bins:
            raise InvalidArgument("duration_us", "must be at least one microsecond per bin")
        if self.duration_us > MAX_TIME_US:
            raise InvalidArgument("duration_us", f"must be at most {MAX_TIME_US} (the chip's clock), got {self.duration_us}")
        return self

    def for_its_method(self) -> TrainConfig:
        """This config with the options its method ignores back at their defaults."""
        defaults = TrainConfig()
        ignored = {name: getattr(defaults, name) for name, methods in OPTION_METHODS.items() if self.method not in methods}
        return replace(self, **ignored)

    def check_applies(self) -> TrainConfig:
        """The checks of a run's own config (not of an experiment's base, whose method and epochs
        each planned run replaces): refuse options set away from their defaults that the method
        would ignore (recorded in config.json, they would say the run was what it was not), and
        warm-up epochs that would keep the chip out of the loop."""
        defaults = TrainConfig()
        for name, methods in OPTION_METHODS.items():
            if self.method not in methods and getattr(self, name) != getattr(defaults, name):
                raise InvalidArgument(
                    name, f"applies to {', '.join(methods)}, not {self.method} (it would be ignored)"
                )
        if self.method in OPTION_METHODS["pretrain_epochs"] and self.pretrain_epochs >= self.epochs:
            raise InvalidArgument(
                "pretrain_epochs",
                f"is {self.pretrain_epochs} of {self.epochs} epochs: {self.method} would never train with the chip",
            )
        return self

    @property
    def snn_recipe(self) -> str:
        """The SNN routes' recipe in words, for reports."""
        clamp = "no hidden clamp" if self.theta_low is None else f"hidden clamp at {self.theta_low:g} threshold"
        init = "torch's default init" if self.init_target is None else f"data init at {self.init_target:g} thresholds"
        qat = "QAT" if self.qat else "bptt in float, quantized after training"
        return f"SNN recipe: readout {self.readout}, {qat}, {init}, {clamp}"

    def check_hidden(self, num_layers: int) -> None:
        """Refuse a substituted layer that is not a hidden layer of a network of ``num_layers``."""
        for i, layer in enumerate(self.substitute_hidden or ()):
            if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < num_layers - 1:
                hint = ""
                if tuple(self.substitute_hidden) == HIDDEN_LAYERS:  # check() wrote the paper's default in
                    hint = " (the paper network's default, set by an earlier check(): leave it None for make_method)"
                raise InvalidArgument(
                    f"substitute_hidden[{i}]", f"must be a hidden layer, 0..{num_layers - 2}, got {layer!r}{hint}"
                )

    def cil_bptt_hidden(self) -> tuple[int, ...] | None:
        """The hidden layers cil-bptt substitutes with these settings (None: its default). Another
        method's config holds only its own () (check() refuses more), which says nothing for cil-bptt."""
        return self.substitute_hidden if self.method == "cil-bptt" else None

    @property
    def substitution(self) -> str:
        """cil-bptt's substitution in words, for reports."""
        layers = self.cil_bptt_hidden()
        layers = HIDDEN_LAYERS if layers is None else layers
        if not layers:
            return "cil-bptt takes the chip's outputs alone"
        return f"cil-bptt takes the chip's outputs and hidden layers {', '.join(map(str, layers))}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["chip"] = list(self.chip)
        if self.substitute_hidden is not None:
            d["substitute_hidden"] = list(self.substitute_hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        for key in ("chip", "substitute_hidden"):
            if kwargs.get(key) is not None:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)
