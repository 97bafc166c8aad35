"""A stop sent to a run on a silent pool host: only that host is marked silent.

Two admin chats, a long run in each: one on gpu2 (behind a proxy the test cuts), one on
local. While gpu2 is silent a stop of its run waits for it, its chat is told of gpu2's
outage and the other chat is told nothing; the local run's stop is delivered at once. When
gpu2 answers again the waiting stop is delivered then (its chain says the host answered),
not at the next retry a shared backoff allows.
"""

from __future__ import annotations

import docker
import pytest

from assistant.config import Settings
from tests.support.engine_proxy import EngineProxy
from tests.support.pool_hosts import (
    LONG,
    in_state,
    pool_settings,
    run_of,
    service,
    until,
    with_run_image,
)
from tests.support.recording import RecordingChannel
from tests.support.run_flow import ADMIN, RUN_ID
from tests.support.ssh_engine import SshEngine

OTHER = "tg:1002"  # a second admin chat, whose run is on the healthy host


@pytest.fixture
def second_engine(ssh_engine: SshEngine, docker_engine: docker.DockerClient) -> SshEngine:
    return with_run_image(ssh_engine, docker_engine)


async def launch_in(channel: RecordingChannel, chat: str, text: str) -> str:
    (reply,) = await channel.say(chat, text)
    found = RUN_ID.search(reply)
    assert found, reply
    return found.group(1)


def said_to(channel: RecordingChannel, chat: str) -> list[str]:
    return [text for to, text in channel.sent if to == chat]


async def test_a_silent_host_holds_back_only_its_own_runs_and_its_stop_goes_when_it_answers(
    second_engine: SshEngine, settings: Settings
) -> None:
    proxy = EngineProxy(str(second_engine.socket))
    await proxy.restore()
    try:
        two_admins = settings.model_copy(update={"admin_chats": (ADMIN, OTHER)})
        async with service(pool_settings(two_admins, proxy.url)) as (orch, channel):
            far = await launch_in(channel, ADMIN, f"{LONG} gpus=1 host=gpu2")
            near = await launch_in(channel, OTHER, f"{LONG} gpus=1 host=local")
            for run_id in (far, near):
                await until(lambda r=run_id: in_state(orch, r, "running"), f"{run_id} up", 300)
            await proxy.cut()
            pool = orch.services.runs.runner.capabilities.hosts
            assert pool is not None
            await until(lambda: not pool.get("gpu2").up, "the pool to see gpu2 drop")  # type: ignore[union-attr]

            (stop,) = await channel.say(ADMIN, f"/run stop {far}")
            assert "when the engine answers" in stop and "host gpu2 does not answer" in stop
            engines = orch.services.runs.signals.engines
            assert engines.of("gpu2").down
            assert not engines.of("local").down and not engines.main.down
            notice = await channel.wait_for("Runs on host gpu2 keep their state", timeout=60)
            assert "host gpu2 does not answer" in notice
            assert notice in said_to(channel, ADMIN)
            await orch.services.monitor.poll()  # one whole pass more: nothing else is told
            assert not [t for t in said_to(channel, OTHER) if "does not answer" in t]

            # the healthy host's run is stopped at once, whatever gpu2 does
            (near_stop,) = await channel.say(OTHER, f"/run stop {near}")
            assert "when the engine answers" not in near_stop, near_stop
            await channel.wait_for(f"Run {near} (classifier) cancelled", timeout=420)
            assert (await run_of(orch, far)).state == "stopping"  # still waiting for gpu2

            await proxy.restore()
            report = await channel.wait_for(f"Run {far} (classifier) cancelled", timeout=420)
            assert "Checkpoint:" in report  # the stop reached it: it checkpointed
            assert not engines.of("gpu2").down
            await orch.services.log.flush()
            back = await orch.services.db.fetchall(
                "SELECT summary FROM event_log WHERE source = 'run' AND source_id = ?"
                " AND summary LIKE '%answers again%'",
                (far,),
            )
            assert [row["summary"] for row in back] == [
                f"run {far}: host gpu2 answers again; its stop is delivered now"
            ]
            assert not [t for t in said_to(channel, OTHER) if "does not answer" in t]
    finally:
        await proxy.aclose()
