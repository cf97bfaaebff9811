"""The interface every backend of the daemon implements (sim, speck, specksim).

Threading contract: ``run``, ``open_session`` and every Session method are called
only from the device's one worker thread (``chiploop_server.scheduler``), so a
backend that drives hardware needs no locks of its own. ``info``, ``deploy`` and
``update`` may be called from any thread and must not touch the hardware:
``deploy`` turns a validated spec into whatever the backend runs (a compiled
network, a samna configuration), and the backend loads it onto the chip when a
run or session needs it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol

import numpy as np
from chiploop.limits import SPECK, ChipLimits
from chiploop.run import RUN_MODES, Readout, RunResult
from chiploop.spec import NetworkSpec


class Session(Protocol):
    """A network fed chunk by chunk, its state kept between chunks (StreamEvents)."""

    def feed(self, events: np.ndarray) -> np.ndarray:
        """Take the next time-sorted chunk of DVS events; return the chip events it caused."""

    def output_events(self, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """The chip events since the session opened or was last reset that it still keeps, those
        numbered ``start`` (default: the oldest kept) up to ``stop``; a copy (read in pages, a long
        session's outputs are not copied whole for each page). chiploop.events.KeptEvents keeps them."""

    @property
    def first_kept_event(self) -> int:
        """The number of the oldest chip event still kept: events before it were dropped (the
        session keeps its newest ``max_kept_events``), 0 until then."""

    def counts(self) -> dict[int, np.ndarray]:
        """Spike counts per output / monitored layer in the session readout's bins."""

    def counters(self) -> np.ndarray:
        """int64 [4 + layers]: chiploop.run.COUNTER_NAMES, then spikes per layer; its output_events
        counts every chip event since open or reset, the ones no longer kept included."""

    def membranes(self, layers: tuple[int, ...]) -> dict[int, np.ndarray]:
        """The current int16 [f, H, W] states of the given layers."""

    def reset(self) -> None:
        """Zero the states and forget the outputs; the session stays open."""


class Device(ABC):
    """One chip (or simulator of one) behind the daemon."""

    #: The backend's name as the CLI knows it: "sim", "speck", "specksim".
    name: str = ""
    limits: ChipLimits = SPECK
    #: The readout modes it runs (chiploop.run.RUN_MODES), its own order first.
    modes: tuple[str, ...] = RUN_MODES
    #: Whether it can snapshot membranes (Readout.membrane_layers, Session.membranes).
    supports_membranes: bool = True

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """At least ``backend``, ``chip_model`` and ``limits`` (ChipLimits)."""

    @abstractmethod
    def deploy(self, spec: NetworkSpec) -> Any:
        """A handle of the validated network ``spec`` for run / open_session."""

    @abstractmethod
    def update(self, handle: Any, updates: dict[int, dict[str, Any]]) -> Any:
        """A new handle with some layers' weights / leak / thresholds replaced (the old one stays valid)."""

    @abstractmethod
    def run(self, handle: Any, events: np.ndarray, offsets: np.ndarray, readout: Readout) -> RunResult:
        """A batch of samples from fresh states; ``compute_seconds`` is the time spent."""

    @abstractmethod
    def open_session(self, handle: Any, readout: Readout, max_kept_events: int | None = None) -> Session:
        """A stream session over the network, keeping its newest ``max_kept_events`` chip events
        (None: all of them)."""

    def warm_up(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Do once at start-up what would make the first request slow (JIT compiles, board opening)."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Release the hardware; the daemon calls it once when it stops."""
