"""A recipe declared in recipes.toml, run through chat with both runners.

The declared command is a small script printing nanoGPT-style lines; it knows nothing of
our protocol. Progress, metrics, checkpoints and pause/resume must come from the
declaration alone. The Docker case runs it in an image that has python3 but not our
agent (the imported Debian base), so the agent is brought in read-only.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import docker
import pytest

from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from assistant.runs.docker_runner import DockerRunner
from assistant.runs.process_runner import ProcessRunner
from tests.support.declared_recipes import SECRET, declare
from tests.support.docker_engine import docker_runner
from tests.support.recording import RecordingChannel
from tests.support.run_flow import ADMIN, RUN_ID, step_of, wait_until

FOREIGN_IMAGE = "assistant-base:bookworm"  # python3, and nothing of ours


@pytest.fixture(params=["process", "docker"])
def declared(request: pytest.FixtureRequest, settings: Settings, tmp_path: Path) -> Settings:
    """Settings with the recipes declared, for each runner (sync: the engine fixture is)."""
    base = settings.model_copy(
        update={"gpus": "none", "monitor_interval_s": 0.1, "stall_timeout_s": 60.0}
    )
    if request.param == "process":
        return declare(base, tmp_path, None)
    engine: docker.DockerClient = request.getfixturevalue("docker_engine")
    try:
        engine.images.get(FOREIGN_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{FOREIGN_IMAGE} is missing: deploy/build-images.sh builds it")
    return declare(base.model_copy(update={"runner": "docker"}), tmp_path, FOREIGN_IMAGE)


@pytest.fixture
async def service(declared: Settings) -> AsyncIterator[tuple[Orchestrator, RecordingChannel]]:
    channel = RecordingChannel()
    runner: ProcessRunner | DockerRunner = (
        docker_runner() if declared.runner == "docker" else ProcessRunner(declared.runs_dir)
    )
    async with Orchestrator(declared, channels=[channel], runner=runner) as orch:
        yield orch, channel


def events_of(orch: Orchestrator, run_id: str) -> list[dict[str, object]]:
    path = orch.services.runs.run_dir(run_id) / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_a_declared_recipe_is_monitored_paused_and_resumed(
    service: tuple[Orchestrator, RecordingChannel],
) -> None:
    orch, channel = service
    (listing,) = await channel.say(ADMIN, "/recipes")
    assert "tinygpt — a nanoGPT-shaped script" in listing and "gpt —" in listing
    (one,) = await channel.say(ADMIN, "/recipes tinygpt")
    assert "steps (int, default 30 in [1, 1000])" in one and "Resume: checkpoints" in one
    assert "HF_TOKEN" in one and SECRET not in one

    (reply,) = await channel.say(ADMIN, "/run train tinygpt steps=40 sleep=0.1")
    run_id = RUN_ID.search(reply).group(1)  # type: ignore[union-attr]
    if orch.services.runs.runner.kind == "docker":
        assert f"image {FOREIGN_IMAGE}" in reply
    repo = orch.services.runs.repo
    await wait_until(lambda: step_of(repo, run_id), 12)
    (show,) = await channel.say(ADMIN, f"/run show {run_id}")
    assert re.search(r"Progress: step \d+/40", show) and "loss" in show, show
    (reply,) = await channel.say(ADMIN, f"/run pause {run_id}")
    assert "pausing" in reply
    paused = await channel.wait_for(f"Run {run_id} (tinygpt) paused", timeout=60)
    assert f"/run resume {run_id}" in paused
    run = await repo.get(run_id)
    assert run is not None and run.checkpoint is not None
    saved = json.loads((orch.services.runs.run_dir(run_id) / run.checkpoint).read_text())["iter"]
    assert saved >= 10 and run.checkpoint == f"out/ckpt-{saved:06d}.json"

    (reply,) = await channel.say(ADMIN, f"/run resume {run_id}")
    assert "resumes from" in reply
    report = await channel.wait_for(f"Run {run_id} (tinygpt) succeeded", timeout=120)
    assert "val_loss" in report and "Best:" in report
    assert channel.images and channel.images[-1][1].read_bytes()[:4] == b"\x89PNG"

    events = events_of(orch, run_id)
    second = [i for i, e in enumerate(events) if e["type"] == "started"][1]
    after = [e["step"] for e in events[second:] if e["type"] == "progress"]
    assert after[0] == saved + 1 and after[-1] == 40  # from the checkpoint to the end
    assert any(e["type"] == "metric" and e["name"] == "val_loss" for e in events)
    done = await repo.get(run_id)
    assert done is not None and done.step == 40 and "val_loss" in done.best

    run_dir = orch.services.runs.run_dir(run_id)
    log = (run_dir / "stdout.log").read_text()
    assert f"token chars: {len(SECRET)}" in log  # the secret reached the command...
    for path in run_dir.rglob("*"):  # ...and nothing the host or the run kept holds it
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path
    assert not (run_dir / ".secrets").exists() or not any((run_dir / ".secrets").iterdir())
    await orch.services.log.flush()
    for table, column in (
        ("event_log", "raw_content"),
        ("action_log", "content"),
        ("tool_call_log", "input"),
        ("tool_call_log", "output"),
    ):
        leaked = await orch.services.db.scalar(
            f"SELECT count(*) FROM {table} WHERE {column} LIKE ?", (f"%{SECRET}%",)
        )
        assert leaked == 0, table


async def test_pause_without_a_resume_rule_is_refused(
    service: tuple[Orchestrator, RecordingChannel],
) -> None:
    orch, channel = service
    (reply,) = await channel.say(ADMIN, "/run train noresume")
    run_id = RUN_ID.search(reply).group(1)  # type: ignore[union-attr]
    await wait_until(lambda: step_of(orch.services.runs.repo, run_id), 2)
    (reply,) = await channel.say(ADMIN, f"/run pause {run_id}")
    assert "cannot be paused" in reply and "declares no way to resume" in reply
    (reply,) = await channel.say(ADMIN, f"/run stop {run_id}")
    await channel.wait_for(f"Run {run_id} (noresume) cancelled", timeout=60)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("/run train tinygpt steps=5000", "above the maximum 1000"),
        ("/run train tinygpt stepz=5", "unknown parameter 'stepz'"),
        ("/run train tinygpt lr=0.1;rm", "lr must be a float"),
        ("/run train tinygpt steps=$(reboot)", "steps must be an int"),
        ("/run train tinygpt workdir=/etc", "unknown parameter 'workdir'"),
        ("/run train nosuch", "unknown recipe 'nosuch'"),
    ],
)
async def test_bad_values_start_nothing(
    service: tuple[Orchestrator, RecordingChannel], text: str, says: str
) -> None:
    orch, channel = service
    (reply,) = await channel.say(ADMIN, text)
    assert says in reply and "Usage:" in reply, reply
    assert await orch.services.runs.repo.recent(5) == []
