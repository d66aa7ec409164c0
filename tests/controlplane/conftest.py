"""Fixtures for the control-plane tests; the servers themselves live in cp_servers.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cp_nomad_double import NomadDouble
from cp_servers import TINY_IMAGE, Exporter, Prometheus, ensure_swarm

from tests.support.processes import free_port
from tests.support.swarm import docker


@pytest.fixture(scope="session")
def exporter() -> Iterator[Exporter]:
    e = Exporter()
    yield e
    e.stop()


@pytest.fixture(scope="session")
def alertmanager_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def prometheus(
    tmp_path_factory: pytest.TempPathFactory, exporter: Exporter, alertmanager_port: int
) -> Iterator[Prometheus]:
    p = Prometheus(tmp_path_factory.mktemp("prometheus"), exporter.port, alertmanager_port)
    yield p
    p.stop()


@pytest.fixture()
def nomad_double() -> Iterator[NomadDouble]:
    d = NomadDouble().start()
    yield d
    d.stop()


@pytest.fixture(scope="session")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> str:
    ensure_swarm(tmp_path_factory.mktemp("docker"))
    return TINY_IMAGE


@pytest.fixture()
def swarm_service(swarm: str) -> Iterator[str]:
    """A replicated service running `sleep` in the tiny image; removed afterwards."""
    name = f"cptest-{uuid.uuid4().hex[:8]}"
    docker(
        "service", "create", "--detach", "--name", name, "--replicas", "1",
        "--stop-grace-period", "1s", "--restart-condition", "any",
        "--no-resolve-image", swarm, "sleep", "3600",
    )  # fmt: skip
    yield name
    docker("service", "rm", name, check=False)


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    return tmp_path
