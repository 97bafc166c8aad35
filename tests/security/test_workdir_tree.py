"""A declared recipe's working directory: credentials anywhere in its tree keep it unmounted.

Checking only the top of the folder let `sub/.env` or `keys/deploy/id_ed25519` through,
mounted into the run's container. The walk covers the tree, bounded: a tree it cannot
cover is refused, not mounted half-checked. Checked when the file is loaded and again at
launch, when the folder may have changed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from assistant.recipes import workdir as workdir_policy
from assistant.recipes.workdir import check_workdir
from assistant.runs.process_runner import ProcessRunner
from tests.support.declared_recipes import declare
from tests.support.recipe_host import make_host
from tests.support.recording import RecordingChannel
from tests.support.run_flow import ADMIN, RUN_ID


def _recipe(workdir: Path) -> str:
    return f'[recipes.r]\ncommand = ["true"]\nworkdir = "{workdir}"\n'


@pytest.mark.parametrize(
    ("relative", "shown"),
    [
        ("sub/.env", "sub/.env"),
        ("sub/id_ed25519", "sub/id_ed25519"),
        ("a/b/c/d/e/.netrc", "a/b/c/d/e/.netrc"),
        ("deploy/keys/server.pem", "deploy/keys/server.pem"),
        ("x/.ssh/config", "x/.ssh"),
        ("x/.config/gcloud/creds.json", "x/.config/gcloud"),
    ],
)
def test_credentials_deep_in_the_tree_are_refused_at_load(
    tmp_path: Path, relative: str, shown: str
) -> None:
    host = make_host(tmp_path)
    project = host.root / "project"
    (project / relative).parent.mkdir(parents=True)
    (project / relative).write_text("secret")
    (project / "train.py").write_text("print('hi')")
    result = host.load(_recipe(project))
    assert "r" not in result.recipes
    assert [p.message for p in result.problems] == [
        f"workdir {project} in recipe 'r' holds {shown!r}; mounting it would expose it"
    ]


def test_a_clean_deep_tree_is_accepted(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    project = host.root / "project"
    deep = project / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    (deep / "model.py").write_text("x = 1")
    (project / "env.example").write_text("HF_TOKEN=")
    result = host.load(_recipe(project))
    assert result.problems == [] and "r" in result.recipes


def test_a_symlink_named_like_a_credential_is_refused_and_never_followed(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    project = host.root / "project"
    (project / "sub").mkdir(parents=True)
    (project / "sub" / "id_rsa").symlink_to("/nonexistent/id_rsa")
    outside = tmp_path / "outside"
    (outside / ".aws").mkdir(parents=True)
    (project / "link").symlink_to(outside)  # followed, it would find .aws
    found, trouble = workdir_policy.credentials_in_tree(project)
    assert found == [Path("sub/id_rsa")] and trouble is None


def test_a_tree_too_large_to_check_is_refused(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    project = host.root / "project"
    project.mkdir()
    for i in range(30):
        (project / f"f{i}.txt").write_text("")
    found, trouble = workdir_policy.credentials_in_tree(project, max_entries=20)
    assert found == []
    assert trouble is not None and "more than 20 files and folders" in trouble


def test_a_tree_too_deep_to_check_is_refused(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    project = host.root / "project"
    (project / "1" / "2" / "3" / "4").mkdir(parents=True)
    _, trouble = workdir_policy.credentials_in_tree(project, max_depth=2)
    assert trouble is not None and "more than 2 folders deep" in trouble
    assert workdir_policy.credentials_in_tree(project, max_depth=4) == ([], None)


def test_check_workdir_reports_the_deep_file(tmp_path: Path) -> None:
    host = make_host(tmp_path)
    project = host.root / "project"
    (project / "sub").mkdir(parents=True)
    (project / "sub" / ".env").write_text("HF_TOKEN=hf_x")
    resolved, problems = check_workdir(project, allowed_roots=[host.root], homes=[])
    assert resolved == project.resolve()
    assert problems == ["holds 'sub/.env'; mounting it would expose it"]


@pytest.fixture
async def service(
    settings: Settings, tmp_path: Path
) -> AsyncIterator[tuple[Orchestrator, RecordingChannel, Settings]]:
    declared = declare(
        settings.model_copy(update={"gpus": "none", "monitor_interval_s": 0.1}), tmp_path, None
    )
    channel = RecordingChannel()
    runner = ProcessRunner(declared.runs_dir)
    async with Orchestrator(declared, channels=[channel], runner=runner) as orch:
        yield orch, channel, declared


async def test_a_credential_planted_after_load_is_refused_at_launch(
    service: tuple[Orchestrator, RecordingChannel, Settings],
) -> None:
    orch, channel, declared = service
    (recipes,) = await channel.say(ADMIN, "/recipes")
    assert "noresume" in recipes  # the folder was clean when the file was loaded
    workdir = declared.recipe_roots[0] / "tinygpt"
    (workdir / "data" / "cache").mkdir(parents=True)
    (workdir / "data" / "cache" / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----")
    replies = await channel.say(ADMIN, "/run train noresume steps=1")
    reply = "\n".join(replies)
    match = RUN_ID.search(reply)
    assert match, reply
    assert "could not start" in reply, reply
    assert "holds 'data/cache/id_ed25519'; mounting it would expose it" in reply, reply
    (run,) = await orch.services.runs.repo.recent(5)
    assert run.state == "failed"
