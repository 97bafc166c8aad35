"""Driving a run through the chat: launch it, read its id, wait for its steps."""

from __future__ import annotations

import asyncio
import re

from tests.support.recording import RecordingChannel

ADMIN = "tg:1001"
RUN_ID = re.compile(r"^Run ([0-9a-z]{6}):", re.M)


async def launch(channel: RecordingChannel, text: str) -> str:
    (reply,) = await channel.say(ADMIN, text)
    match = RUN_ID.search(reply)
    assert match, reply
    return match.group(1)


async def step_of(repo, run_id: str) -> int:  # type: ignore[no-untyped-def]
    run = await repo.get(run_id)
    return 0 if run is None else run.step


async def wait_until(probe, at_least: int, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while await probe() < at_least:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"did not reach {at_least} in {timeout}s")
        await asyncio.sleep(0.1)
