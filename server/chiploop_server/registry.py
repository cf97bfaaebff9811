"""Deployed models, keyed by content hash.

Deploying a network that is already registered is free (``cached=True``). An
incremental update re-hashes only the layers it changes and registers the result
under its own id (the old model stays usable, so a trainer may keep both). The
registry is bounded: beyond ``max_models`` the least recently used model goes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from chiploop.errors import InvalidArgument, NotFound
from chiploop.limits import apply_layer_updates, canonical, validate
from chiploop.spec import NetworkSpec

from chiploop_server.devices.base import Device


@dataclass(frozen=True)
class Model:
    model_id: str
    spec: NetworkSpec
    cores: tuple[int, ...]
    layer_hashes: tuple[str, ...]
    handle: Any  # what the device runs (a compiled network, a samna configuration)


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
        cached = self._cached(model_id)
        if cached is not None:
            return cached, True
        return self._register(Model(model_id, spec, tuple(cores), layer_hashes, self.device.deploy(spec)))

    def update(self, model_id: str, updates: dict[int, dict[str, Any]]) -> tuple[Model, bool]:
        """Register the model with some layers changed; returns (new model, cached)."""
        if not updates:
            raise InvalidArgument("updates", "no layer to update")
        base = self.get(model_id)
        spec, changed = apply_layer_updates(base.spec, updates)
        layer_hashes = list(base.layer_hashes)
        for index in changed:
            layer_hashes[index] = spec.layers[index].content_hash()
        new_id = spec.content_hash_from_layers(layer_hashes)
        cached = self._cached(new_id)
        if cached is not None:
            return cached, True
        typed = {i: {k: getattr(spec.layers[i], k) for k in updates[i]} for i in changed}
        return self._register(Model(new_id, spec, base.cores, tuple(layer_hashes), self.device.update(base.handle, typed)))

    def get(self, model_id: str) -> Model:
        with self._lock:
            model = self._models.get(model_id)
            if model is None:
                raise NotFound(
                    f"model_id: no model {model_id!r} is deployed here (never deployed, or evicted: deploy it again)"
                )
            self._models.move_to_end(model_id)
            return model

    # The device builds a handle outside the lock: a slow build (a board's configuration) must not
    # hold up every Run's ``get``. Two callers building the same model at once both build; the
    # first to register wins and the other gets it as cached.
    def _cached(self, model_id: str) -> Model | None:
        with self._lock:
            model = self._models.get(model_id)
            if model is not None:
                self._models.move_to_end(model_id)
            return model

    def _register(self, model: Model) -> tuple[Model, bool]:
        with self._lock:
            first = self._models.get(model.model_id)
            if first is not None:
                self._models.move_to_end(model.model_id)
                return first, True
            self._models[model.model_id] = model
            while len(self._models) > self.max_models:
                self._models.popitem(last=False)
        return model, False
