"""The chip's limits, the validation of a network against them, and core placement.

One place for the resource table of docs/chip-model.md: the daemon refuses a
network here at deploy time, and the exporter calls the same check before a
network ever leaves the trainer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from chiploop.errors import InvalidArgument, NetworkRejected, check_int
from chiploop.events import MAX_TIME_US
from chiploop.spec import InputLayer, Layer, NetworkSpec


@dataclass(frozen=True)
class ChipLimits:
    """Speck's resources (one chip)."""

    chip_model: str = "speck2f"
    cores: int = 9
    max_destinations: int = 2
    weight_min: int = -128
    weight_max: int = 127
    state_min: int = -32768
    state_max: int = 32767
    max_kernel: int = 16
    strides: tuple[int, ...] = (1, 2, 4, 8)
    max_padding: int = 7
    pools: tuple[int, ...] = (1, 2, 4)
    max_channels: int = 1024
    max_input_size: int = 128
    max_output_size: int = 64
    kernel_memory: tuple[int, ...] = (16384, 16384, 16384, 32768, 32768, 65536, 65536, 16384, 16384)
    neuron_memory: tuple[int, ...] = (65536, 65536, 65536, 32768, 32768, 16384, 16384, 16384, 16384)

    def as_dict(self) -> dict:
        return asdict(self)


SPECK = ChipLimits()

#: The longest latency a network may model per hop, in us: a hop on the chip takes microseconds,
#: and a second's bound keeps output times (input time + hops) far from int64's end.
MAX_HOP_LATENCY_US = 1_000_000


def _ceil_log2(n: int) -> int:
    return max(0, (int(n) - 1).bit_length())


def kernel_memory_words(layer: Layer) -> int:
    """c * 2^(ceil(log2(kx*ky)) + ceil(log2(f)))."""
    ky, kx = layer.kernel_size
    return layer.in_channels * 2 ** (_ceil_log2(kx * ky) + _ceil_log2(layer.out_channels))


def neuron_memory_words(out_shape: tuple[int, int, int]) -> int:
    """f * 2^(ceil(log2(H)) + ceil(log2(W))) of the conv output."""
    f, h, w = out_shape
    return f * 2 ** (_ceil_log2(h) + _ceil_log2(w))


def _check_int_array(values: object, where: str, name: str, lo: int, hi: int, limit: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise InvalidArgument(f"{where}.{name}", "contains NaN or inf; quantize to integers first")
        raise InvalidArgument(
            f"{where}.{name}", f"must be an integer array (quantize first), got {arr.dtype}"
        )
    if arr.dtype.kind not in "iub":
        raise InvalidArgument(f"{where}.{name}", f"must be an integer array, got {arr.dtype}")
    if arr.size:
        low, high = int(arr.min()), int(arr.max())
        if low < lo or high > hi:
            bad = low if low < lo else high
            raise NetworkRejected(where, limit, bad, f"{lo}..{hi}")
    return arr


def check_layer_fields(index: int, layer: Layer, limits: ChipLimits = SPECK) -> None:
    """Everything about one layer that does not depend on its neighbours."""
    where = f"layers[{index}]"
    if not isinstance(layer.weights, np.ndarray):
        raise InvalidArgument(f"{where}.weights", f"must be a numpy integer array, got {type(layer.weights).__name__}")
    if layer.weights.ndim != 4:
        raise InvalidArgument(
            f"{where}.weights", f"must be 4-D [f, c, ky, kx], got shape {np.shape(layer.weights)}"
        )
    _check_int_array(layer.weights, where, "weights", limits.weight_min, limits.weight_max, "weight")
    for name in ("threshold_high", "threshold_low"):
        value = getattr(layer, name)
        if not isinstance(value, (int, np.integer)):
            raise InvalidArgument(f"{where}.{name}", f"must be an integer, got {value!r}")
        if not limits.state_min <= int(value) <= limits.state_max:
            raise NetworkRejected(index, name, int(value), f"{limits.state_min}..{limits.state_max}")
    if layer.threshold_high <= 0:
        raise NetworkRejected(index, "threshold_high", layer.threshold_high, "1..32767")
    if layer.threshold_low >= layer.threshold_high:
        raise NetworkRejected(
            index, "threshold_low", layer.threshold_low, f"less than threshold_high ({layer.threshold_high})"
        )
    if layer.reset not in ("subtract", "zero"):
        raise InvalidArgument(f"{where}.reset", f"must be 'subtract' or 'zero', got {layer.reset!r}")
    ky, kx = layer.kernel_size
    for axis, k in (("y", ky), ("x", kx)):
        if not 1 <= k <= limits.max_kernel:
            raise NetworkRejected(index, f"kernel size ({axis})", k, f"1..{limits.max_kernel}")
    for axis, s in zip("yx", layer.stride, strict=True):
        if s not in limits.strides:
            raise NetworkRejected(index, f"stride ({axis})", s, "/".join(map(str, limits.strides)))
    for axis, p in zip("yx", layer.padding, strict=True):
        if not 0 <= p <= limits.max_padding:
            raise NetworkRejected(index, f"padding ({axis})", p, f"0..{limits.max_padding}")
    for axis, p in zip("yx", layer.pool, strict=True):
        if p not in limits.pools:
            raise NetworkRejected(index, f"pooling ({axis})", p, "/".join(map(str, limits.pools)))
    for name, count in (("input channels", layer.in_channels), ("output channels", layer.out_channels)):
        if not 1 <= count <= limits.max_channels:
            raise NetworkRejected(index, name, count, f"1..{limits.max_channels}")
    if len(layer.destinations) > limits.max_destinations:
        raise NetworkRejected(
            index, "destinations", len(layer.destinations), f"at most {limits.max_destinations}"
        )
    if layer.leak is not None:
        leak = _check_int_array(layer.leak, where, "leak", limits.state_min, limits.state_max, "leak")
        if leak.shape != (layer.out_channels,):
            raise InvalidArgument(
                f"{where}.leak", f"must have shape ({layer.out_channels},), got {leak.shape}"
            )
        check_int(layer.leak_period_us, f"{where}.leak_period_us", 1, MAX_TIME_US)  # a leak ticks


#: The fields of a deployed layer an incremental update may replace (no shape changes).
UPDATE_KEYS: tuple[str, ...] = ("weights", "leak", "threshold_high", "threshold_low")


def canonical(spec: NetworkSpec) -> NetworkSpec:
    """The spec with weights as int8 and leaks as int16: the dtypes content hashes and kernels
    expect (call it only on a checked spec: it casts)."""
    layers = []
    for layer in spec.layers:
        changes: dict[str, Any] = {}
        if np.asarray(layer.weights).dtype != np.int8:
            changes["weights"] = np.asarray(layer.weights, np.int8)
        if layer.leak is not None and np.asarray(layer.leak).dtype != np.int16:
            changes["leak"] = np.asarray(layer.leak, np.int16)
        layers.append(replace(layer, **changes) if changes else layer)
    return replace(spec, layers=tuple(layers))


def apply_layer_updates(
    spec: NetworkSpec, updates: dict[int, dict[str, Any]], limits: ChipLimits = SPECK
) -> tuple[NetworkSpec, list[int]]:
    """An incremental update, checked: the new spec (canonical) and the indices of the changed layers.

    ``updates`` maps a layer index to ``{field: value}`` with fields from
    ``UPDATE_KEYS``; a None value keeps the deployed one. Nothing about the
    network's shape can change, so only the updated layers are checked. A
    malformed update names the request's field (``updates[i].weights``); a value
    the chip cannot hold names the layer, as a deploy would (``layers[i]``).
    """
    if not isinstance(updates, dict):
        raise InvalidArgument("updates", f"must be a dict {{layer: {{field: value}}}}, got {type(updates).__name__}")
    changed = []
    for index, fields in updates.items():
        where = f"updates[{index}]"
        if not isinstance(index, (int, np.integer)) or not 0 <= index < len(spec.layers):
            raise InvalidArgument(f"{where}.layer", f"no layer {index!r} (network has {len(spec.layers)})")
        if not isinstance(fields, dict):
            raise InvalidArgument(where, f"must be a dict of fields, got {type(fields).__name__}")
        unknown = sorted(set(fields) - set(UPDATE_KEYS))
        if unknown:
            raise InvalidArgument(f"{where}.{unknown[0]}", f"cannot be updated (updatable: {', '.join(UPDATE_KEYS)})")
        old = spec.layers[index]
        changes = {k: v for k, v in fields.items() if v is not None}
        if "weights" in changes and np.shape(changes["weights"]) != old.weights.shape:
            raise InvalidArgument(
                f"{where}.weights", f"shape must stay {old.weights.shape}, got {np.shape(changes['weights'])}"
            )
        if "leak" in changes and old.leak_period_us <= 0:
            raise InvalidArgument(
                f"{where}.leak", f"layer {index} was deployed without a leak period; deploy it with one first"
            )
        for name in ("threshold_high", "threshold_low"):
            if name in changes:
                if not isinstance(changes[name], (int, np.integer)):
                    raise InvalidArgument(f"{where}.{name}", f"must be an integer, got {changes[name]!r}")
                changes[name] = int(changes[name])
        candidate = spec.with_layer(int(index), **changes)
        check_layer_fields(int(index), candidate.layers[index], limits)
        spec = canonical(candidate)
        changed.append(int(index))
    return spec, sorted(changed)


def check_input_layer(inp: InputLayer, limits: ChipLimits = SPECK) -> None:
    """The chip's input stage: sensor size, pooling and crop window within what it can do."""
    for axis, size in zip("yx", inp.sensor_size, strict=True):
        if not 1 <= size <= limits.max_input_size:
            raise NetworkRejected("input", f"sensor size ({axis})", size, f"1..{limits.max_input_size}")
    for axis, p in zip("yx", inp.pool, strict=True):
        if p not in limits.pools:
            raise NetworkRejected("input", f"pooling ({axis})", p, "/".join(map(str, limits.pools)))
    if inp.crop is not None:
        if len(inp.crop) != 4:
            raise InvalidArgument("input.crop", f"must be (y0, y1, x0, x1), got {inp.crop}")
        y0, y1, x0, x1 = inp.crop
        h, w = inp.pooled_size
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise InvalidArgument("input.crop", f"window {inp.crop} is empty or outside the pooled field {h}x{w}")


def validate(spec: NetworkSpec, limits: ChipLimits = SPECK) -> list[int]:
    """Check a network against the chip and place it; return the core of each layer.

    Raises InvalidArgument (malformed) or NetworkRejected (a limit broken; the
    message names the layer, the limit and the value).
    """
    check_input_layer(spec.input, limits)
    if len(spec.layers) > limits.cores:
        raise NetworkRejected("network", "number of layers", len(spec.layers), f"at most {limits.cores}")
    for i, layer in enumerate(spec.layers):
        check_layer_fields(i, layer, limits)
    shapes = spec.layer_shapes()
    for i, ((_, h, w), (_, oh, ow)) in enumerate(shapes):
        for name, size, top in (
            ("input height", h, limits.max_input_size),
            ("input width", w, limits.max_input_size),
            ("output height", oh, limits.max_output_size),
            ("output width", ow, limits.max_output_size),
        ):
            # Zero: a source pooled to nothing, or a kernel larger than its padded input; every
            # spike routed there would vanish.
            if not 1 <= size <= top:
                raise NetworkRejected(i, name, size, f"1..{top}")
    for m in spec.monitor:
        if not 0 <= m < len(spec.layers):
            raise InvalidArgument("monitor", f"no layer {m}")
    check_int(spec.hop_latency_us, "hop_latency_us", 0, MAX_HOP_LATENCY_US)
    return place(spec, [out for _, out in shapes], limits)


def place(spec: NetworkSpec, out_shapes: list[tuple[int, int, int]], limits: ChipLimits = SPECK) -> list[int]:
    """Assign layers to distinct cores so both memories fit (bipartite matching).

    Deterministic: layers are matched in order, each trying cores from 0 up
    (Kuhn's augmenting paths), so the same network always lands the same way.
    """
    needs = [
        (kernel_memory_words(layer), neuron_memory_words(shape))
        for layer, shape in zip(spec.layers, out_shapes, strict=True)
    ]
    fits = [
        [c for c in range(limits.cores) if k <= limits.kernel_memory[c] and n <= limits.neuron_memory[c]]
        for k, n in needs
    ]
    for i, (options, (k, n)) in enumerate(zip(fits, needs, strict=True)):
        if not options:
            kmax, nmax = max(limits.kernel_memory), max(limits.neuron_memory)
            if k > kmax:
                raise NetworkRejected(i, "kernel memory (words)", k, f"at most {kmax} on any core")
            if n > nmax:
                raise NetworkRejected(i, "neuron memory (words)", n, f"at most {nmax} on any core")
            raise NetworkRejected(
                i, "kernel + neuron memory (words)", f"{k} + {n}", "a core with room for both"
            )
    core_of_layer: dict[int, int] = {}
    layer_on_core: dict[int, int] = {}

    def augment(layer: int, seen: set[int]) -> bool:
        for core in fits[layer]:
            if core in seen:
                continue
            seen.add(core)
            if core not in layer_on_core or augment(layer_on_core[core], seen):
                layer_on_core[core] = layer
                core_of_layer[layer] = core
                return True
        return False

    for i in range(len(spec.layers)):
        if not augment(i, set()):
            k, n = needs[i]
            raise NetworkRejected(
                i,
                "placement",
                f"kernel {k} + neuron {n} words",
                "a free core with room for both (the other layers take the cores that fit)",
            )
    return [core_of_layer[i] for i in range(len(spec.layers))]
