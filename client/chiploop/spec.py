"""The network spec: the one description of what is deployed on a chip.

Shared by the exporter (trainer side), the wire format, the daemon's registry and
every backend. Layers are addressed by their index in ``NetworkSpec.layers``;
which physical core each one lands on is decided by ``chiploop.limits.place``.

Conventions (see docs/chip-model.md in the shared docs):
- weights are int8 ``[f, c, ky, kx]`` (output channels, input channels, kernel rows,
  kernel columns); a fully connected layer is a conv whose kernel covers its input;
- shapes are (channels, height, width), pairs are (y, x);
- a layer with no destinations is an output layer: its spikes leave the chip.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from chiploop.errors import InvalidArgument

ResetMode = Literal["subtract", "zero"]
Pair = tuple[int, int]


def _pair(value: int | Pair | list[int]) -> Pair:
    if isinstance(value, (int, np.integer)):
        return (int(value), int(value))
    y, x = value
    return (int(y), int(x))


@dataclass(frozen=True)
class InputLayer:
    """The chip's DVS input stage.

    Order of operations (as sinabs' DVSLayer and the Speck DVS filter do it):
    pool (integer division of x, y), then crop to ``crop`` = (y0, y1, x0, x1),
    half-open, in pooled coordinates (events outside are dropped and counted),
    then flip inside the cropped window, then merge polarities (channel 0 for
    both) or keep them (channel = p).
    """

    sensor_size: Pair = (128, 128)
    pool: Pair = (1, 1)
    crop: tuple[int, int, int, int] | None = None
    flip_x: bool = False
    flip_y: bool = False
    merge_polarities: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "sensor_size", _pair(self.sensor_size))
        object.__setattr__(self, "pool", _pair(self.pool))
        if self.crop is not None:
            object.__setattr__(self, "crop", tuple(int(v) for v in self.crop))

    @property
    def pooled_size(self) -> Pair:
        (h, w), (py, px) = self.sensor_size, self.pool
        return (-(-h // py), -(-w // px))

    @property
    def window(self) -> tuple[int, int, int, int]:
        """The crop window (y0, y1, x0, x1) in pooled coordinates, the whole field if unset."""
        if self.crop is None:
            h, w = self.pooled_size
            return (0, h, 0, w)
        return self.crop  # type: ignore[return-value]

    @property
    def out_shape(self) -> tuple[int, int, int]:
        y0, y1, x0, x1 = self.window
        return (1 if self.merge_polarities else 2, y1 - y0, x1 - x0)

    def map_events(self, events: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(c, y, x, kept) of DVS events entering layer 0, vectorised, in this stage's order: pool
        (integer division), crop to the window (``kept`` is False outside it: the chip drops and
        counts those), flip inside it, then merge polarities (channel 0) or channel = p. c, y, x
        are int32 and meaningful only where kept. The simulator maps its input with it, and the
        training frames are binned with it, so both see the same input."""
        pool_y, pool_x = self.pool
        y0, y1, x0, x1 = self.window
        y = events["y"].astype(np.int32) // pool_y
        x = events["x"].astype(np.int32) // pool_x
        kept = (y >= y0) & (y < y1) & (x >= x0) & (x < x1)
        y -= y0
        x -= x0
        if self.flip_y:
            y = (y1 - y0 - 1) - y
        if self.flip_x:
            x = (x1 - x0 - 1) - x
        c = np.zeros(len(events), np.int32) if self.merge_polarities else events["p"].astype(np.int32)
        return c, y, x, kept


@dataclass(frozen=True, eq=False)
class Layer:
    """One spiking conv layer (one core).

    ``leak`` (int16 per output channel) is added every ``leak_period_us`` to every
    neuron of the layer; it is how the chip expresses biases and leaky neurons.
    """

    weights: np.ndarray
    threshold_high: int
    threshold_low: int = -32768
    reset: ResetMode = "subtract"
    stride: Pair = (1, 1)
    padding: Pair = (0, 0)
    pool: Pair = (1, 1)
    destinations: tuple[int, ...] = ()
    leak: np.ndarray | None = None
    leak_period_us: int = 0
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "stride", _pair(self.stride))
        object.__setattr__(self, "padding", _pair(self.padding))
        object.__setattr__(self, "pool", _pair(self.pool))
        object.__setattr__(self, "destinations", tuple(int(d) for d in self.destinations))

    @property
    def kernel_size(self) -> Pair:
        return (int(self.weights.shape[2]), int(self.weights.shape[3]))

    @property
    def in_channels(self) -> int:
        return int(self.weights.shape[1])

    @property
    def out_channels(self) -> int:
        return int(self.weights.shape[0])

    def conv_out_size(self, in_size: Pair) -> Pair:
        (h, w), (ky, kx) = in_size, self.kernel_size
        (sy, sx), (py, px) = self.stride, self.padding
        return ((h + 2 * py - ky) // sy + 1, (w + 2 * px - kx) // sx + 1)

    def content_hash(self) -> str:
        """Hash of everything that defines this layer (weights included)."""
        h = hashlib.sha256()
        meta = {
            "thr": [int(self.threshold_high), int(self.threshold_low)],
            "reset": self.reset,
            "stride": self.stride,
            "padding": self.padding,
            "pool": self.pool,
            "dest": self.destinations,
            "leak_period": int(self.leak_period_us),
            "shape": list(self.weights.shape),
            "has_leak": self.leak is not None,
        }
        h.update(json.dumps(meta, sort_keys=True).encode())
        h.update(np.ascontiguousarray(self.weights, dtype=np.int8).tobytes())
        if self.leak is not None:
            h.update(np.ascontiguousarray(self.leak, dtype="<i2").tobytes())
        return h.hexdigest()


@dataclass(frozen=True, eq=False)
class NetworkSpec:
    """A whole network as the chip holds it.

    The input layer feeds ``layers[0]``. ``monitor`` lists layers whose spikes are
    returned besides those of the output layers. ``hop_latency_us`` is added to a
    spike's timestamp per core it crosses (0: spikes keep their input's time).
    """

    layers: tuple[Layer, ...]
    input: InputLayer = field(default_factory=InputLayer)
    monitor: tuple[int, ...] = ()
    hop_latency_us: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "monitor", tuple(int(m) for m in self.monitor))

    @property
    def output_layers(self) -> tuple[int, ...]:
        return tuple(i for i, layer in enumerate(self.layers) if not layer.destinations)

    def layer_shapes(self) -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
        """(input shape, conv output shape) of every layer, as (c, h, w).

        Raises InvalidArgument when the wiring is inconsistent (a layer fed by
        sources of different shapes, a channel mismatch, a cycle, an unreachable
        layer). Limits of the chip are checked by ``chiploop.limits.validate``.
        """
        n = len(self.layers)
        if n == 0:
            raise InvalidArgument("layers", "a network needs at least one layer")
        for i, layer in enumerate(self.layers):
            for d in layer.destinations:
                if not 0 <= d < n:
                    raise InvalidArgument(f"layers[{i}].destinations", f"no layer {d}")
                if d <= i:
                    # The chip can route backwards, but a cascade that loops never ends.
                    raise InvalidArgument(
                        f"layers[{i}].destinations",
                        f"layer {i} feeds layer {d}: routes must go to a later layer (no cycles)",
                    )
        in_shapes: list[tuple[int, int, int] | None] = [None] * n
        in_shapes[0] = self.input.out_shape
        shapes = []
        for i, layer in enumerate(self.layers):
            in_shape = in_shapes[i]
            if in_shape is None:
                raise InvalidArgument(f"layers[{i}]", "no layer and no input feeds this layer")
            c, h, w = in_shape
            if layer.in_channels != c:
                raise InvalidArgument(
                    f"layers[{i}].weights",
                    f"has {layer.in_channels} input channels, its input has {c}",
                )
            oh, ow = layer.conv_out_size((h, w))
            if oh < 1 or ow < 1:
                raise InvalidArgument(
                    f"layers[{i}].weights",
                    f"kernel {layer.kernel_size} does not fit input {h}x{w} with padding {layer.padding}",
                )
            out = (layer.out_channels, oh, ow)
            shapes.append((in_shape, out))
            py, px = layer.pool
            pooled = (layer.out_channels, oh // py, ow // px)
            for d in layer.destinations:
                if in_shapes[d] is not None and in_shapes[d] != pooled:
                    raise InvalidArgument(
                        f"layers[{d}]",
                        f"fed shapes {in_shapes[d]} and {pooled} by different sources",
                    )
                in_shapes[d] = pooled
        return shapes

    def content_hash(self) -> str:
        """The model id: a hash of the whole network; equal networks share it."""
        return self.content_hash_from_layers([layer.content_hash() for layer in self.layers])

    def content_hash_from_layers(self, layer_hashes: list[str]) -> str:
        """Model id from precomputed per-layer hashes (an incremental update re-hashes only what changed)."""
        h = hashlib.sha256()
        meta = {
            "input": [
                self.input.sensor_size,
                self.input.pool,
                self.input.crop,
                self.input.flip_x,
                self.input.flip_y,
                self.input.merge_polarities,
            ],
            "monitor": self.monitor,
            "hop": int(self.hop_latency_us),
            "layers": layer_hashes,
        }
        h.update(json.dumps(meta, sort_keys=True).encode())
        return h.hexdigest()[:32]

    def with_layer(self, index: int, **changes) -> NetworkSpec:
        """A copy with some fields of one layer replaced (e.g. weights=...)."""
        layers = list(self.layers)
        layers[index] = replace(layers[index], **changes)
        return replace(self, layers=tuple(layers))
