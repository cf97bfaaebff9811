"""The daemon's backends: ``open_device(name, workers)`` and which backends this host can run.

``sim`` always works. ``speck`` (a Speck dev board) and ``specksim`` (samna's
simulator) need SynSense's real ``samna`` package; it is detected WITHOUT importing
it, because the PyPI ``samna`` is a stub that tries to pip-install the real one from
an index when imported.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

from chiploop.errors import BackendUnavailable, InvalidArgument

from chiploop_server.devices.base import Device, Session

BACKENDS: tuple[str, ...] = ("sim", "speck", "specksim")
SAMNA_BACKENDS: tuple[str, ...] = ("speck", "specksim")

INSTALL_SAMNA = (
    "install SynSense's real samna from SynSense's package index "
    "(pip install samna --index-url https://gitlab.com/api/v4/projects/27423070/packages/pypi/simple); "
    "the samna on PyPI is only a stub"
)


def real_samna_installed() -> bool:
    """True when an importable samna is the real one: no stub mark and compiled modules inside.

    Reads the package's files as text; never imports it.
    """
    try:
        spec = importlib.util.find_spec("samna")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    folder = Path(next(iter(spec.submodule_search_locations)))
    init = folder / "__init__.py"
    try:
        if "PYPI_SAMNA = True" in init.read_text(errors="replace"):
            return False
    except OSError:
        pass  # a package without __init__.py: judge by its compiled modules alone
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES) + (".so", ".pyd")
    return any(p.name.endswith(suffixes) for p in folder.rglob("*") if p.is_file())


#: What each samna backend imports besides samna: the board's configuration is built with
#: sinabs' Speck2FConfigBuilder from torch layers (the daemon's image has neither by default).
SAMNA_BACKEND_NEEDS: dict[str, tuple[str, ...]] = {"speck": ("sinabs", "torch"), "specksim": ()}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_for(name: str) -> list[str]:
    """What this host lacks to run the samna backend ``name``, found without importing anything."""
    missing = [] if real_samna_installed() else ["samna"]
    return missing + [m for m in SAMNA_BACKEND_NEEDS[name] if not _importable(m)]


def available_backends() -> list[str]:
    return ["sim", *(name for name in SAMNA_BACKENDS if not missing_for(name))]


def open_device(name: str, workers: int = 1) -> Device:
    """The backend called ``name``; BackendUnavailable (saying how to get it) when this host lacks it."""
    if name == "sim":
        from chiploop_server.devices.sim import SimDevice

        return SimDevice(workers=workers)
    if name in SAMNA_BACKENDS:
        missing = missing_for(name)
        if "samna" in missing:
            raise BackendUnavailable(f"backend {name!r} needs the real samna package: {INSTALL_SAMNA}")
        if missing:
            raise BackendUnavailable(
                f"backend {name!r} also needs {' and '.join(missing)} (pip install 'chiploop[train]')"
            )
        from chiploop_server.devices import samna_backends

        return samna_backends.open_samna_device(name, workers=workers)
    raise InvalidArgument("backend", f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Device", "Session", "available_backends", "missing_for", "open_device", "real_samna_installed"]
