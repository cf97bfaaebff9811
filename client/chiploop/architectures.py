"""Network shapes as plain data (no torch), shared by models, export, benchmarks and tests.

A ``ConvStage`` is one chip layer: a spiking conv with the sum pooling that its
route to the next layer applies. The last stage of the paper's network is the
fully connected layer, written as a conv whose kernel covers its whole input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from chiploop.errors import InvalidArgument
from chiploop.spec import InputLayer, Layer, NetworkSpec

#: The spiking CNN's neuron kinds and output readouts (``chiploop.models``), here so that the
#: training config and CLI can name them without importing torch.
NeuronKind = Literal["iaf", "leaky"]
NEURON_KINDS: tuple[str, ...] = ("iaf", "leaky")
ReadoutKind = Literal["charge", "counts"]
READOUT_KINDS: tuple[str, ...] = ("charge", "counts")


@dataclass(frozen=True)
class ConvStage:
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    pool: int = 1


@dataclass(frozen=True)
class Architecture:
    name: str
    in_shape: tuple[int, int, int]  # (channels, height, width) entering layer 0
    stages: tuple[ConvStage, ...]

    def layer_shapes(self) -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
        """(input, conv output) shape of every stage, (c, h, w)."""
        shapes = []
        c, h, w = self.in_shape
        for s in self.stages:
            oh = (h + 2 * s.padding - s.kernel) // s.stride + 1
            ow = (w + 2 * s.padding - s.kernel) // s.stride + 1
            shapes.append(((c, h, w), (s.out_channels, oh, ow)))
            c, h, w = s.out_channels, oh // s.pool, ow // s.pool
        return shapes

    def spec(
        self,
        weights: list[np.ndarray],
        thresholds: list[int],
        input_layer: InputLayer | None = None,
        reset: str = "subtract",
        leaks: list[np.ndarray | None] | None = None,
        leak_period_us: int = 0,
        monitor: tuple[int, ...] = (),
    ) -> NetworkSpec:
        """The chip network of this architecture with the given int8 weights and thresholds.

        Values are passed on as given, not cast: ``chiploop.limits.validate`` (which export,
        deploy and the daemon run) refuses floats and out-of-range values by name, where a cast
        here would wrap 200 to -56 and truncate 2.9 to 2 before anything could see them.

        input_layer: the chip's input stage (a sensor with pooling or a crop); by default a sensor of
        ``in_shape``'s size, polarities merged when it has one channel. Its output must be
        ``in_shape``: a network exported for another input would run, on other shapes, a network
        other than the one trained."""
        stage = self.default_input_layer() if input_layer is None else input_layer
        if stage.out_shape != self.in_shape:
            raise InvalidArgument(
                "input",
                f"the input stage gives {stage.out_shape} (sensor {stage.sensor_size}, pool {stage.pool}, crop "
                f"{stage.crop}, merge_polarities {stage.merge_polarities}); {self.name} takes {self.in_shape}",
            )
        n = len(self.stages)
        leaks = leaks or [None] * n
        layers = [
            Layer(
                weights=np.asarray(weights[i]),
                threshold_high=int(thresholds[i]) if isinstance(thresholds[i], (int, np.integer)) else thresholds[i],
                reset=reset,  # type: ignore[arg-type]
                stride=(s.stride, s.stride),
                padding=(s.padding, s.padding),
                pool=(s.pool, s.pool),
                destinations=(i + 1,) if i + 1 < n else (),
                leak=leaks[i],
                leak_period_us=leak_period_us if leaks[i] is not None else 0,
                name=f"{self.name}.{i}",
            )
            for i, s in enumerate(self.stages)
        ]
        return NetworkSpec(layers=tuple(layers), input=stage, monitor=monitor)

    def default_input_layer(self) -> InputLayer:
        """A sensor of ``in_shape``'s size with nothing in between (the default input stage)."""
        c, h, w = self.in_shape
        return InputLayer(sensor_size=(h, w), merge_polarities=c == 1)


#: The paper's kind of network for N-MNIST: five spiking conv layers and one fully
#: connected layer, no biases, inside Speck's limits (placement: see chiploop.limits).
NMNIST_PAPER = Architecture(
    name="nmnist6",
    in_shape=(2, 34, 34),
    stages=(
        ConvStage(16, 3, padding=1, pool=2),  # 16x34x34 -> 16x17x17
        ConvStage(32, 3, padding=1, pool=2),  # 32x17x17 -> 32x8x8
        ConvStage(64, 3, padding=1, pool=2),  # 64x8x8 -> 64x4x4
        ConvStage(64, 3, padding=1),  # 64x4x4
        ConvStage(64, 3, padding=1),  # 64x4x4
        ConvStage(10, 4),  # fully connected: 64x4x4 -> 10
    ),
)
