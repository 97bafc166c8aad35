"""The HTTP listener and /healthz, over real HTTP against a running orchestrator.

The engine is the machine's real Docker engine behind a unix-socket proxy the test cuts
and restores; the channel is the real Telegram client against the fake Bot API server;
the database lock is taken by a second real SQLite connection.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from assistant.channels.telegram import TelegramChannel
from assistant.config import Settings
from assistant.errors import ConfigError
from assistant.http_server import ENDPOINT_FILE, HttpServer, parse_address
from assistant.orchestrator import Orchestrator
from storage.db import Database
from storage.kv import KeyValue
from tests.fakes.telegram_server import FakeTelegram
from tests.support.engine_proxy import EngineProxy, engine_proxy
from tests.support.service_process import ROOT, env_for, up

CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=15)  # a hung /healthz fails the test


def endpoint(settings: Settings) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((settings.assistant_home / ENDPOINT_FILE).read_text())
    return data


async def get(url: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session,
        session.get(url) as response,
    ):
        assert response.content_type == "application/json"
        return response.status, json.loads(await response.text())


async def healthz(settings: Settings) -> tuple[int, dict[str, Any]]:
    return await get(endpoint(settings)["url"] + "/healthz")


async def until_status(settings: Settings, status: int, wait_s: float = 30) -> dict[str, Any]:
    """Probe until /healthz answers `status` (a state change is seen within a probe or
    two; the bound only keeps a broken test from hanging)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        got, body = await healthz(settings)
        if got == status:
            assert body["status"] == ("ok" if status == 200 else "unhealthy")
            return body
        if loop.time() > deadline:
            raise AssertionError(f"/healthz stayed {got}, wanted {status}: {body}")
        await asyncio.sleep(0.2)


def all_ok_but(body: dict[str, Any], name: str) -> None:
    """Every check but `name` is well: the body names only the part that is not."""
    for key, value in body["checks"].items():
        if key == name:
            continue
        if isinstance(value, dict):
            assert set(value.values()) <= {"connected"}, body
        else:
            assert value == "ok", body


# ---- the engine ------------------------------------------------------------------------


@pytest.fixture
async def proxy() -> AsyncIterator[EngineProxy]:
    async with engine_proxy() as running:
        yield running


@pytest.fixture
async def on_docker(settings: Settings, proxy: EngineProxy) -> AsyncIterator[Settings]:
    """A service whose runner is the real engine, reached through the proxy."""
    settings = settings.model_copy(update={"runner": "docker", "docker_host": proxy.url})
    async with Orchestrator(settings) as orch:
        assert orch.services.runs.runner.kind == "docker"
        yield settings


async def test_healthz_is_503_naming_the_engine_while_it_is_cut_and_200_once_back(
    on_docker: Settings, proxy: EngineProxy
) -> None:
    status, body = await healthz(on_docker)
    assert status == 200 and body["status"] == "ok"
    assert body["checks"]["engine"] == "ok" and proxy.pings >= 1  # really asked
    all_ok_but(body, "engine")

    await proxy.cut()
    body = await until_status(on_docker, 503)
    engine = body["checks"]["engine"]
    assert engine.startswith("unreachable: ") and proxy.url in engine
    all_ok_but(body, "engine")

    await proxy.restore()
    body = await until_status(on_docker, 200)
    assert body["checks"]["engine"] == "ok"


async def test_a_black_holed_engine_does_not_hang_healthz(
    on_docker: Settings, proxy: EngineProxy
) -> None:
    await until_status(on_docker, 200)
    await proxy.black_hole()  # accepts, reads, never answers
    body = await until_status(on_docker, 503)  # each probe answered within CLIENT_TIMEOUT
    assert body["checks"]["engine"].startswith("unreachable: "), body
    all_ok_but(body, "engine")
    await proxy.restore()
    await until_status(on_docker, 200)


async def test_a_burst_of_probes_asks_the_engine_once(
    on_docker: Settings, proxy: EngineProxy
) -> None:
    await until_status(on_docker, 200)
    before = proxy.pings
    results = await asyncio.gather(*(healthz(on_docker) for _ in range(20)))
    assert [status for status, _ in results] == [200] * 20
    # shared and cached for 2 s: one ping, two if the burst straddled an expiry
    assert proxy.pings - before <= 2


# ---- channels --------------------------------------------------------------------------


async def test_a_disconnected_channel_makes_healthz_503_naming_it(settings: Settings) -> None:
    fake = FakeTelegram()
    await fake.start()
    db = await Database.open(settings.db_path)
    try:
        channel = TelegramChannel(
            fake.token, api_url=fake.base_url, kv=KeyValue(db), poll_timeout=1.0
        )
        channel.backoff_s = 0.05
        channel.max_backoff_s = 0.1
        async with Orchestrator(settings, channels=[channel]):
            body = await until_status(settings, 200)
            assert body["checks"]["channels"] == {"telegram": "connected"}

            fake.fail_next("getUpdates", 502, times=100_000)  # the Bot API is down
            fake.push_message(1001, "/help")  # ends the long poll waiting now
            body = await until_status(settings, 503)
            assert body["checks"]["channels"] == {"telegram": "disconnected"}
            all_ok_but(body, "channels")

            fake.clear_failures()
            body = await until_status(settings, 200)
            assert body["checks"]["channels"] == {"telegram": "connected"}
    finally:
        await db.aclose()
        await fake.aclose()


# ---- the database and the event-log writer ---------------------------------------------


async def test_a_locked_database_and_a_failing_event_writer_are_named(
    settings: Settings,
) -> None:
    async with Orchestrator(settings) as orch:
        await until_status(settings, 200)
        other = sqlite3.connect(settings.db_path, isolation_level=None, timeout=0)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            orch.services.log.log_event("test", None, summary="waits for the lock")
            body = await until_status(settings, 503)
            assert body["checks"]["database"].startswith("not writable: "), body
            assert "locked" in body["checks"]["database"]
            # the writer fails once its 5 s busy timeout runs out
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while body["checks"]["event_log"] == "ok" and loop.time() < deadline:
                await asyncio.sleep(0.5)
                _, body = await healthz(settings)
            assert body["checks"]["event_log"].startswith("failing: "), body
            assert "locked" in body["checks"]["event_log"]
        finally:
            other.execute("ROLLBACK")
            other.close()
        body = await until_status(settings, 200)
        assert body["checks"]["event_log"] == "ok" and body["checks"]["database"] == "ok"
        # the check's own row was rolled back: it leaves nothing behind
        assert await KeyValue(orch.services.db).get("healthz") is None


# ---- the listener ----------------------------------------------------------------------


async def test_http_json_names_the_bound_loopback_address_owner_only(
    settings: Settings,
) -> None:
    path = settings.assistant_home / ENDPOINT_FILE
    async with Orchestrator(settings) as orch:
        data = endpoint(settings)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert data["host"] == "127.0.0.1" and data["port"] > 0
        assert data["url"] == f"http://127.0.0.1:{data['port']}"
        assert orch.services.http is not None and orch.services.http.url == data["url"]
        status, body = await healthz(settings)
        assert status == 200 and body["checks"]["process"] == "ok"
        assert body["checks"]["engine"] == "ok"  # the process runner
    assert not path.exists()  # gone with the service
    with pytest.raises(aiohttp.ClientConnectionError):  # and nothing answers there
        await get(data["url"] + "/healthz")


def test_the_default_address_is_loopback() -> None:
    default = Settings.model_fields["http_address"].default
    address = parse_address(default)
    assert address is not None and address.is_loopback and address.host == "127.0.0.1"


async def test_off_disables_the_listener(settings: Settings) -> None:
    settings = settings.model_copy(update={"http_address": "off"})
    async with Orchestrator(settings) as orch:
        assert orch.services.http is None
        assert not (settings.assistant_home / ENDPOINT_FILE).exists()


@pytest.mark.parametrize(
    "value",
    ["9477", "127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000", ":9477", "::1:9477", "on"],
)
def test_a_malformed_address_is_refused_with_the_expected_form(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_address(value)
    assert "ASSISTANT_HTTP" in str(info.value) and value in str(info.value)


def test_well_formed_addresses_parse() -> None:
    assert parse_address("OFF") is None
    six = parse_address("[::1]:0")
    assert six is not None and six.host == "::1" and six.port == 0 and six.is_loopback
    wide = parse_address("0.0.0.0:9477")
    assert wide is not None and not wide.is_loopback


async def test_routes_registered_before_start_are_served(settings: Settings) -> None:
    server = HttpServer.from_settings(settings)
    assert server is not None

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": request.path})

    server.add_get("/extra", hello)
    await server.start()
    try:
        assert await get(server.url + "/extra") == (200, {"hello": "/extra"})
        with pytest.raises(RuntimeError, match="after the HTTP listener started"):
            server.add_get("/late", hello)
    finally:
        await server.aclose()


def test_a_taken_port_stops_up_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = up(tmp_path / "home", ASSISTANT_HTTP=f"127.0.0.1:{port}", ASSISTANT_RUNNER="process")
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    lines = [line for line in err.splitlines() if line.startswith("assistant: ")]
    assert lines == [
        f"assistant: HTTP listener: cannot listen on http://127.0.0.1:{port} (Address already"
        " in use); set ASSISTANT_HTTP to a free address (port 0 = any free port) or to off"
    ], err
    assert "Traceback" not in err
    assert not (tmp_path / "home" / "local-channel.json").exists()  # nothing left running


# ---- the probe the healthchecks and the systemd unit run -------------------------------


async def health_probe(home: Path, *args: str) -> tuple[int, str, str]:
    """`python -m assistant.health` as a real subprocess (what compose and systemd run)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "assistant.health",
        *args,
        cwd=ROOT,
        env=env_for(home),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_probe_waits_for_the_service_and_reports_its_health(
    settings: Settings,
) -> None:
    home = settings.assistant_home
    code, _, err = await health_probe(home)
    assert code == 1 and "the service is not up" in err

    waiting = asyncio.create_task(health_probe(home, "--wait", "60"))  # ExecStartPost's way
    await asyncio.sleep(0.5)
    async with Orchestrator(settings):
        code, out, _ = await waiting
        assert code == 0 and json.loads(out)["status"] == "ok"

        other = sqlite3.connect(settings.db_path, isolation_level=None, timeout=0)
        try:
            other.execute("BEGIN IMMEDIATE")  # the database is not writable now
            code, _, err = await health_probe(home)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert code == 1
        assert json.loads(err)["checks"]["database"].startswith("not writable: ")
    code, _, err = await health_probe(home)  # stopped: http.json is gone with it
    assert code == 1 and "the service is not up" in err
