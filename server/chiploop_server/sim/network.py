"""A NetworkSpec compiled into the flat arrays the simulator's kernels read.

Every layer lives in a few concatenated arrays plus one int64 table of per-layer
fields (``meta``, columns named below), so one compiled kernel runs any network:

- weights: int8, per layer ``[c, ky, kx reversed, f]`` (output channel innermost,
  so one event touches contiguous f-vectors; kx reversed so that, at stride 1, the
  neurons of one output row that an event reaches, (oy, ox_lo..ox_hi, :), and
  their weights are two contiguous runs: one vector update per kernel row);
- states: int16, per layer ``[H, W, f]`` (the conv output, before pooling);
- leaks: int16, per layer ``[f]`` (zeros where a layer has no leak).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from chiploop.errors import InvalidArgument
from chiploop.limits import apply_layer_updates, validate
from chiploop.spec import NetworkSpec

# Columns of SimNetwork.meta (one row per layer).
F, H, W = 0, 1, 2  # conv output: channels, rows, columns
C, HIN, WIN = 3, 4, 5  # input: channels, rows, columns
KY, KX, SY, SX, PY, PX = 6, 7, 8, 9, 10, 11
POOL_Y, POOL_X, HP, WP = 12, 13, 14, 15  # the route's sum pooling and the pooled size
THR, THR_LOW, RESET_ZERO = 16, 17, 18
NDEST, DEST0, DEST1 = 19, 20, 21
W_OFS, S_OFS, L_OFS = 22, 23, 24  # offsets into weights, states, leaks
HAS_LEAK, LEAK_PERIOD = 25, 26
RECORDED = 27  # 1 for output and monitored layers: their spikes are returned
I_OFS = 28  # offset of the layer's input frame in the sync kernel's frame buffer
META_COLUMNS = 29


def _layer_row(spec: NetworkSpec, i: int, in_shape, out_shape) -> np.ndarray:
    layer = spec.layers[i]
    row = np.zeros(META_COLUMNS, np.int64)
    row[[F, H, W]] = out_shape
    row[[C, HIN, WIN]] = in_shape
    row[[KY, KX]] = layer.kernel_size
    row[[SY, SX]] = layer.stride
    row[[PY, PX]] = layer.padding
    row[[POOL_Y, POOL_X]] = layer.pool
    row[HP] = out_shape[1] // layer.pool[0]
    row[WP] = out_shape[2] // layer.pool[1]
    _set_dynamics(row, layer)
    row[NDEST] = len(layer.destinations)
    row[DEST0] = layer.destinations[0] if len(layer.destinations) > 0 else -1
    row[DEST1] = layer.destinations[1] if len(layer.destinations) > 1 else -1
    row[RECORDED] = int(not layer.destinations or i in spec.monitor)
    return row


def _set_dynamics(row: np.ndarray, layer) -> None:
    """The fields a weight update may change."""
    row[THR] = int(layer.threshold_high)
    row[THR_LOW] = int(layer.threshold_low)
    row[RESET_ZERO] = int(layer.reset == "zero")
    row[HAS_LEAK] = int(layer.leak is not None)
    row[LEAK_PERIOD] = int(layer.leak_period_us) if layer.leak is not None else 0


def _kernel_weights(weights: np.ndarray) -> np.ndarray:
    """[f, c, ky, kx] -> flat [c, ky, kx reversed, f] int8."""
    w = np.transpose(np.asarray(weights, np.int8), (1, 2, 3, 0))[:, :, ::-1, :]
    return np.ascontiguousarray(w).ravel()


@dataclass(frozen=True, eq=False)
class SimNetwork:
    """A validated network with its compiled arrays (read-only; runs share it across threads)."""

    spec: NetworkSpec
    cores: tuple[int, ...]
    meta: np.ndarray
    weights: np.ndarray
    leaks: np.ndarray
    num_states: int
    num_frame: int

    @classmethod
    def from_spec(cls, spec: NetworkSpec) -> SimNetwork:
        """Validate (chiploop.limits.validate raises its errors) and compile."""
        if not isinstance(spec, NetworkSpec):
            raise InvalidArgument("spec", f"must be a NetworkSpec, got {type(spec).__name__}")
        cores = validate(spec)
        shapes = spec.layer_shapes()
        rows, weights, leaks = [], [], []
        w_ofs = s_ofs = l_ofs = i_ofs = 0
        for i, (in_shape, out_shape) in enumerate(shapes):
            row = _layer_row(spec, i, in_shape, out_shape)
            row[W_OFS], row[S_OFS], row[L_OFS], row[I_OFS] = w_ofs, s_ofs, l_ofs, i_ofs
            layer = spec.layers[i]
            weights.append(_kernel_weights(layer.weights))
            f = out_shape[0]
            leaks.append(np.zeros(f, np.int16) if layer.leak is None else np.asarray(layer.leak, np.int16))
            w_ofs += weights[-1].size
            s_ofs += int(np.prod(out_shape))
            l_ofs += f
            i_ofs += int(np.prod(in_shape))
            rows.append(row)
        return cls(
            spec=spec,
            cores=tuple(cores),
            meta=np.stack(rows),
            weights=np.concatenate(weights),
            leaks=np.concatenate(leaks),
            num_states=s_ofs,
            num_frame=i_ofs,
        )

    @property
    def num_layers(self) -> int:
        return int(self.meta.shape[0])

    def out_shape(self, layer: int) -> tuple[int, int, int]:
        """(f, H, W) of a layer's conv output."""
        return tuple(int(v) for v in self.meta[layer, [F, H, W]])  # type: ignore[return-value]

    def recorded_layers(self) -> tuple[int, ...]:
        """Output layers and monitored layers, in layer order: their spikes are returned."""
        return tuple(int(i) for i in np.flatnonzero(self.meta[:, RECORDED]))

    def with_updates(self, updates: dict[int, dict]) -> SimNetwork:
        """A network with some layers' weights, leak or thresholds replaced.

        ``updates`` maps a layer index to a dict with any of "weights" (int8, the
        deployed shape), "leak" (int16 [f]; the layer's leak_period_us must be set),
        "threshold_high", "threshold_low". An absent key or None keeps the deployed
        value. Only the changed layers are checked and recompiled; the placement
        stays, since no shape can change.
        """
        spec, changed = apply_layer_updates(self.spec, updates)
        meta = self.meta.copy()
        weights = self.weights.copy()
        leaks = self.leaks.copy()
        for index in changed:
            layer = spec.layers[index]
            row = meta[index]
            _set_dynamics(row, layer)
            w = _kernel_weights(layer.weights)
            weights[row[W_OFS] : row[W_OFS] + w.size] = w
            if layer.leak is not None:
                leaks[row[L_OFS] : row[L_OFS] + row[F]] = layer.leak
        return SimNetwork(
            spec=spec,
            cores=self.cores,
            meta=meta,
            weights=weights,
            leaks=leaks,
            num_states=self.num_states,
            num_frame=self.num_frame,
        )
