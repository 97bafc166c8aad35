"""The engine's view of the service's paths (assistant/runs/engine_paths.py): the pure part.

The mapping read from a real container and its check at start are tested for real in
tests/deploy/test_compose.py (the service in its container, a run, a wrong mapping).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

import assistant
from assistant.errors import RunStartError
from assistant.runs.engine_paths import EnginePaths, agent_copy, own_container_ids

AGENT = Path(assistant.__file__).resolve().parent


def test_a_path_under_a_mount_becomes_the_hosts_and_the_deepest_mount_wins() -> None:
    paths = EnginePaths(
        (
            (PurePosixPath("/data"), PurePosixPath("/var/lib/docker/volumes/x/_data")),
            (PurePosixPath("/data/hf"), PurePosixPath("/srv/hf")),
        ),
        contained=True,
    )
    assert not paths.identity
    assert paths.to_host(Path("/data/runs/r1")) == "/var/lib/docker/volumes/x/_data/runs/r1"
    assert paths.to_host(Path("/data")) == "/var/lib/docker/volumes/x/_data"
    assert paths.to_host(Path("/data/hf/models")) == "/srv/hf/models"
    with pytest.raises(RunStartError, match="lies in the service's container"):
        paths.to_host(Path("/database"))


def test_on_the_engines_host_paths_are_its_own() -> None:
    paths = EnginePaths()
    assert paths.identity
    assert paths.to_host(Path("/home/me/.assistant/runs/r1")) == "/home/me/.assistant/runs/r1"


def test_the_container_id_comes_from_mountinfo_then_the_host_name(tmp_path: Path) -> None:
    cid = "a" * 64
    info = tmp_path / "mountinfo"
    info.write_text(f"1 2 0:1 /var/lib/docker/containers/{cid}/hostname /etc/hostname rw\n")
    ids = own_container_ids(info)
    assert ids[0] == cid and len(ids) == 2
    assert own_container_ids(tmp_path / "missing")[0] != cid


def test_the_agent_is_copied_once_per_version_with_what_the_run_image_holds(
    tmp_path: Path,
) -> None:
    copy = agent_copy(AGENT, tmp_path)
    assert copy.name == "assistant" and copy.parent.parent == tmp_path / "agent"
    assert (copy / "__init__.py").read_bytes() == (AGENT / "__init__.py").read_bytes()
    assert (copy / "jobs" / "agent.py").read_bytes() == (AGENT / "jobs" / "agent.py").read_bytes()
    assert not (copy / "runs").exists() and not list(copy.rglob("__pycache__"))
    assert agent_copy(AGENT, tmp_path) == copy
    assert len(list((tmp_path / "agent").iterdir())) == 1
