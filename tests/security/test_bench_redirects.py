"""A benchmark target may not bounce the client elsewhere with a redirect.

The url check refuses link-local and metadata addresses, but a server at an allowed address
could answer every probe with `302 Location: http://169.254.169.254/...`; a client that
follows redirects would then read the metadata service after all. Here the "elsewhere" is
a second local server that counts its hits: it must see none.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from assistant.jobs.bench.client import BenchClient, ClientConfig, served_models, wait_healthy
from assistant.jobs.bench.profiles import custom_profile


@dataclass
class Servers:
    redirector: str
    hits: list[str] = field(default_factory=list)


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    hits: list[str] = []

    async def forbidden(request: web.Request) -> web.Response:
        hits.append(request.path)
        body = '{"data": [{"id": "secret-model"}]}'
        return web.Response(text=body, content_type="application/json")

    target = web.Application()
    target.router.add_route("*", "/{tail:.*}", forbidden)
    target_runner, target_url = await _serve(target)

    async def bounce(request: web.Request) -> web.Response:
        raise web.HTTPFound(target_url + request.path)

    redirector = web.Application()
    redirector.router.add_route("*", "/{tail:.*}", bounce)
    redirect_runner, redirect_url = await _serve(redirector)
    try:
        yield Servers(redirect_url + "/v1", hits)
    finally:
        await redirect_runner.cleanup()
        await target_runner.cleanup()


async def test_health_probe_does_not_follow_a_redirect(servers: Servers) -> None:
    health = await wait_healthy(servers.redirector, timeout_s=1.0, interval_s=0.2)
    assert not health.ok
    assert "302" in health.detail
    assert servers.hits == []


async def test_model_listing_does_not_follow_a_redirect(servers: Servers) -> None:
    assert await served_models(servers.redirector, timeout_s=2.0) is None
    assert servers.hits == []


async def test_requests_do_not_follow_a_redirect(servers: Servers) -> None:
    profile = custom_profile(8, 3, 1, 2)
    async with BenchClient(ClientConfig(servers.redirector, "m", warmup=1)) as client:
        run = await client.run(profile)
    assert [r.ok for r in run.records] == [False, False]
    assert all(r.error is not None and r.error.startswith("HTTP 302") for r in run.records)
    assert servers.hits == []
