"""recipes.toml as chat sees it: refusals that start nothing, and edits while running."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from assistant.runs.process_runner import ProcessRunner
from tests.support.recording import RecordingChannel
from tests.support.run_flow import ADMIN

GOOD = """
[recipes.mine]
summary = "version one"
command = ["python3", "-c", "print('iter 1: loss 1.0')", "{steps}"]
gpus = 0
[recipes.mine.params]
steps = { type = "int", default = 5, min = 1, max = 10 }
"""


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    root = tmp_path / "allowed"
    (root / "repo").mkdir(parents=True)
    (root / "home" / ".ssh").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (root / "escape").symlink_to(tmp_path / "elsewhere")
    return root


@pytest.fixture
async def service(
    settings: Settings, roots: Path
) -> AsyncIterator[tuple[Orchestrator, RecordingChannel]]:
    s = settings.model_copy(update={"recipe_roots": (roots,)})
    s.assistant_home.mkdir(parents=True, exist_ok=True)
    channel = RecordingChannel()
    async with Orchestrator(s, channels=[channel], runner=ProcessRunner(s.runs_dir)) as orch:
        yield orch, channel


def write(settings: Settings, text: str) -> None:
    path = settings.recipes_path
    path.write_text(text)
    stamp = path.stat().st_mtime_ns + 1_000_000_000  # a later mtime even within one tick
    os.utime(path, ns=(stamp, stamp))


@pytest.mark.parametrize(
    ("workdir", "says"),
    [
        ("{tmp}/elsewhere", "outside the allowed roots"),
        ("{root}/escape", "outside the allowed roots"),
        ("{root}/home/.ssh", "'.ssh', which may hold credentials"),
        ("{root}/home", ".ssh"),
        ("relative/path", "absolute"),
    ],
)
async def test_a_mount_outside_the_roots_or_onto_credentials_is_refused(
    service: tuple[Orchestrator, RecordingChannel],
    roots: Path,
    tmp_path: Path,
    workdir: str,
    says: str,
) -> None:
    orch, channel = service
    where = workdir.format(tmp=tmp_path, root=roots)
    write(
        orch.settings,
        f'[recipes.leaky]\nsummary = "x"\nworkdir = "{where}"\ncommand = ["ls"]\ngpus = 0\n',
    )
    (reply,) = await channel.say(ADMIN, "/run train leaky")
    assert "recipe 'leaky' is declared in recipes.toml but refused: line 3" in reply, reply
    assert says in reply
    assert await orch.services.runs.repo.recent(5) == []
    assert not orch.settings.runs_dir.exists() or not any(orch.settings.runs_dir.iterdir())


async def test_a_broken_edit_keeps_the_last_good_version_and_status_says_so(
    service: tuple[Orchestrator, RecordingChannel],
) -> None:
    orch, channel = service
    write(orch.settings, GOOD)
    (listing,) = await channel.say(ADMIN, "/recipes")
    assert "mine — version one" in listing and "Note:" not in listing
    write(orch.settings, GOOD.replace("version one", "version two").replace("max = 10", "max ="))
    (status,) = await channel.say(ADMIN, "/status")
    assert "recipes.toml has 1 problem(s)" in status and "last good version is active" in status
    (listing,) = await channel.say(ADMIN, "/recipes")
    assert "mine — version one" in listing and "Note:" in listing
    write(orch.settings, GOOD.replace("version one", "version two"))
    (listing,) = await channel.say(ADMIN, "/recipes")
    assert "mine — version two" in listing and "Note:" not in listing
    (status,) = await channel.say(ADMIN, "/status")
    assert "recipes.toml" not in status
