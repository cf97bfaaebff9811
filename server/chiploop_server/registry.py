"""Deployed models, keyed by content hash.

Deploying a network that is already registered is free (``cached=True``). An
incremental update re-hashes only the layers it changes and registers the result
under its own id (the old model stays usable, so a trainer may keep both). The
registry is bounded: beyond ``max_models`` the least recently used model goes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from chiploop.errors import InvalidArgument, NotFound
from chiploop.limits import check_layer_fields, validate
from chiploop.spec import NetworkSpec
from chiploop.wire import UPDATE_KEYS

from chiploop_server.devices.base import Device


@dataclass(frozen=True)
class Model:
    model_id: str
    spec: NetworkSpec
    cores: tuple[int, ...]
    layer_hashes: tuple[str, ...]
    handle: Any  # what the device runs (a compiled network, a samna configuration)


def canonical(spec: NetworkSpec) -> NetworkSpec:
    """The spec with weights as int8 and leaks as int16 (call only after validate: it casts)."""
    layers = []
    for layer in spec.layers:
        changes: dict[str, Any] = {}
        if np.asarray(layer.weights).dtype != np.int8:
            changes["weights"] = np.asarray(layer.weights, np.int8)
        if layer.leak is not None and np.asarray(layer.leak).dtype != np.int16:
            changes["leak"] = np.asarray(layer.leak, np.int16)
        layers.append(replace(layer, **changes) if changes else layer)
    return NetworkSpec(layers=tuple(layers), input=spec.input, monitor=spec.monitor, hop_latency_us=spec.hop_latency_us)


def apply_updates(spec: NetworkSpec, updates: dict[int, dict[str, Any]]) -> tuple[NetworkSpec, list[int]]:
    """The updated spec (checked and canonical) and the indices of the layers that changed."""
    changed = []
    for index, fields in sorted(updates.items()):
        where = f"updates[{index}]"
        if not 0 <= index < len(spec.layers):
            raise InvalidArgument(f"{where}.layer", f"no layer {index} (network has {len(spec.layers)})")
        unknown = sorted(set(fields) - set(UPDATE_KEYS))
        if unknown:
            raise InvalidArgument(f"{where}.{unknown[0]}", f"cannot be updated (updatable: {', '.join(UPDATE_KEYS)})")
        old = spec.layers[index]
        if "weights" in fields and np.shape(fields["weights"]) != old.weights.shape:
            raise InvalidArgument(
                f"{where}.weights", f"shape must stay {old.weights.shape}, got {np.shape(fields['weights'])}"
            )
        if "leak" in fields and old.leak is None and old.leak_period_us <= 0:
            raise InvalidArgument(
                f"{where}.leak", f"layer {index} was deployed without a leak period; deploy it with one first"
            )
        candidate = spec.with_layer(index, **fields)
        check_layer_fields(index, candidate.layers[index])
        spec = canonical(candidate)
        changed.append(index)
    return spec, changed


class Registry:
    """Thread-safe; deploys and updates build device handles but never touch hardware."""

    def __init__(self, device: Device, max_models: int = 64) -> None:
        if max_models < 1:
            raise InvalidArgument("max_models", f"must be >= 1, got {max_models}")
        self.device = device
        self.max_models = max_models
        self._models: OrderedDict[str, Model] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._models)

    def deploy(self, spec: NetworkSpec) -> tuple[Model, bool]:
        """Validate (InvalidArgument / NetworkRejected), register; returns (model, cached)."""
        cores = validate(spec, self.device.limits)
        spec = canonical(spec)
        layer_hashes = tuple(layer.content_hash() for layer in spec.layers)
        model_id = spec.content_hash_from_layers(list(layer_hashes))
        with self._lock:
            if model_id in self._models:
                self._models.move_to_end(model_id)
                return self._models[model_id], True
            model = Model(model_id, spec, tuple(cores), layer_hashes, self.device.deploy(spec))
            self._insert(model)
        return model, False

    def update(self, model_id: str, updates: dict[int, dict[str, Any]]) -> tuple[Model, bool]:
        """Register the model with some layers changed; returns (new model, cached)."""
        if not updates:
            raise InvalidArgument("updates", "no layer to update")
        base = self.get(model_id)
        spec, changed = apply_updates(base.spec, updates)
        layer_hashes = list(base.layer_hashes)
        for index in changed:
            layer_hashes[index] = spec.layers[index].content_hash()
        new_id = spec.content_hash_from_layers(layer_hashes)
        with self._lock:
            if new_id in self._models:
                self._models.move_to_end(new_id)
                return self._models[new_id], True
            typed = {i: {k: getattr(spec.layers[i], k) for k in updates[i]} for i in changed}
            model = Model(new_id, spec, base.cores, tuple(layer_hashes), self.device.update(base.handle, typed))
            self._insert(model)
        return model, False

    def get(self, model_id: str) -> Model:
        with self._lock:
            model = self._models.get(model_id)
            if model is None:
                raise NotFound(
                    f"model_id: no model {model_id!r} is deployed here (never deployed, or evicted: deploy it again)"
                )
            self._models.move_to_end(model_id)
            return model

    def _insert(self, model: Model) -> None:
        self._models[model.model_id] = model
        while len(self._models) > self.max_models:
            self._models.popitem(last=False)
