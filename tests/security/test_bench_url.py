"""`/run bench serve url=...` never points the host-network benchmark at metadata services.

A benchmark runs with the host's network, so `url=http://169.254.169.254/...` would have
the host fetch its cloud instance's credentials and report them back as "responses".
Link-local and metadata addresses are refused, also when a name resolves to one, unless
the admin sets ASSISTANT_BENCH_ALLOW_LINK_LOCAL=true.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from assistant.runs.process_runner import ProcessRunner
from tests.fakes.openai_server import FakeOpenAIServer
from tests.support.recording import RecordingChannel
from tests.support.run_flow import ADMIN, RUN_ID

SMALL = "profiles=none in=8 out=4 c=1 n=2"


async def _service(settings: Settings) -> AsyncIterator[tuple[Orchestrator, RecordingChannel]]:
    channel = RecordingChannel()
    runner = ProcessRunner(settings.runs_dir)
    async with Orchestrator(settings, channels=[channel], runner=runner) as orch:
        yield orch, channel


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[tuple[Orchestrator, RecordingChannel]]:
    async for pair in _service(settings.model_copy(update={"monitor_interval_s": 0.1})):
        yield pair


@pytest.fixture
async def permissive(settings: Settings) -> AsyncIterator[tuple[Orchestrator, RecordingChannel]]:
    update = {"monitor_interval_s": 0.1, "bench_allow_link_local": True}
    async for pair in _service(settings.model_copy(update=update)):
        yield pair


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254, a cloud metadata address"),
        ("http://169.254.170.2/v2/credentials", "a cloud metadata address"),
        ("http://169.254.1.1:8000/v1", "169.254.1.1, a link-local address"),
        ("http://[fe80::1]:8000/v1", "fe80::1, a link-local address"),
        ("http://[fd00:ec2::254]/latest", "fd00:ec2::254, a cloud metadata address"),
        ("http://[::ffff:169.254.169.254]/x", "169.254.169.254, a cloud metadata address"),
        ("http://100.100.100.200/latest/meta-data", "a cloud metadata address"),
        ("http://metadata.google.internal/computeMetadata/v1", "a cloud metadata service"),
        ("http://2852039166/latest", "resolves to 169.254.169.254"),  # the same, as a number
        ("http://0xa9fea9fe/latest", "resolves to 169.254.169.254"),
    ],
)
async def test_metadata_and_link_local_urls_are_refused(
    service: tuple[Orchestrator, RecordingChannel], url: str, says: str
) -> None:
    orch, channel = service
    (reply,) = await channel.say(ADMIN, f"/run bench serve url={url} model=m {SMALL}")
    assert RUN_ID.search(reply) is None, reply
    assert says in reply and "url refused" in reply, reply
    assert "ASSISTANT_BENCH_ALLOW_LINK_LOCAL=true" in reply
    assert await orch.services.runs.repo.recent(5) == []


async def test_a_name_that_does_not_resolve_is_refused(
    service: tuple[Orchestrator, RecordingChannel],
) -> None:
    orch, channel = service
    url = "http://no-such-host.invalid:8000/v1"
    (reply,) = await channel.say(ADMIN, f"/run bench serve url={url} model=m {SMALL}")
    assert "does not resolve" in reply and "cannot be checked" in reply, reply
    assert await orch.services.runs.repo.recent(5) == []


async def test_a_loopback_server_is_still_benchmarked(
    service: tuple[Orchestrator, RecordingChannel],
) -> None:
    _, channel = service
    async with FakeOpenAIServer(ttft_ms=2, itl_ms=1, stats_interval_s=0) as fake:
        (reply,) = await channel.say(
            ADMIN, f"/run bench serve url={fake.url} model=fake-model {SMALL}"
        )
        match = RUN_ID.search(reply)
        assert match, reply
        await channel.wait_for(f"Benchmark {match.group(1)} (fake-model)", timeout=90)


async def test_the_admin_setting_lets_link_local_through(
    permissive: tuple[Orchestrator, RecordingChannel],
) -> None:
    _, channel = permissive
    url = "http://169.254.169.254:9/v1"
    (reply,) = await channel.say(
        ADMIN, f"/run bench serve url={url} model=m {SMALL} health_timeout_s=0.5"
    )
    match = RUN_ID.search(reply)
    assert match is not None and "url refused" not in reply, reply
    # Accepted: it runs, finds nothing listening, and ends on its own.
    await channel.wait_for(f"Run {match.group(1)} (serve) failed", timeout=60)
