"""Fixtures of the security tests: each attack under both runners."""

from __future__ import annotations

import docker
import pytest

from tests.support.hostile_runs import FOREIGN_IMAGE


@pytest.fixture(params=["process", "docker"])
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "docker":
        engine: docker.DockerClient = request.getfixturevalue("docker_engine")
        try:
            engine.images.get(FOREIGN_IMAGE)
        except docker.errors.ImageNotFound:
            pytest.fail(f"{FOREIGN_IMAGE} is missing: deploy/build-images.sh builds it")
    return str(request.param)
