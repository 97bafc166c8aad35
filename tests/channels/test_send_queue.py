"""The send queue every chat channel sends through, on its own: a caller that gives up
mid-send (its task cancelled, as at shutdown) must not take the queue down with it."""

from __future__ import annotations

import asyncio

from assistant.channels.delivery import SendQueue


async def test_a_caller_cancelled_mid_send_leaves_the_queue_working() -> None:
    queue = SendQueue("test")
    started, release = asyncio.Event(), asyncio.Event()
    sent: list[str] = []

    async def slow() -> str:
        started.set()
        await release.wait()
        sent.append("slow")
        return "slow"

    async def quick() -> str:
        sent.append("quick")
        return "quick"

    caller = asyncio.create_task(queue.submit(slow))
    await started.wait()
    caller.cancel()  # gives up while its message is on the wire
    await asyncio.gather(caller, return_exceptions=True)
    release.set()
    assert await asyncio.wait_for(queue.submit(quick), 5) == "quick"
    assert sent == ["slow", "quick"]  # the first went out anyway; the second after it
    await queue.aclose()  # raised InvalidStateError before, so a channel never closed
    assert queue.stats.sent == 2
