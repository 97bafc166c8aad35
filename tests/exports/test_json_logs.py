"""`ASSISTANT_LOG_FORMAT=json`: one redacted JSON object a line, tied to the event chain.

Through the service's own logging set-up (`_setup_logging`), a real orchestrator on a real
SQLite file, and `assistant up` as a real subprocess.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from assistant.cli import JsonFormatter, _setup_logging
from assistant.config import Settings
from assistant.observability import EventLog
from assistant.orchestrator import Orchestrator
from assistant.services import shared_redactor
from storage.ids import decode
from tests.support.recording import RecordingChannel
from tests.support.service_log import captured_service_log
from tests.support.service_process import cli, running_service

SECRET = "hunter2-secret-value"  # configured in the settings fixture
# A secret with a quote and a backslash: in the encoded line it reads `q\"uo\\te`, so
# redacting the encoded text would miss it.
ODD_SECRET = 'q"uo\\te-odd-secret'
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
log = logging.getLogger("tests.exports.json_logs")


@pytest.fixture
def json_log() -> Iterator[Callable[[Settings], io.StringIO]]:
    """What `assistant up` would write to stderr in the JSON format, at DEBUG."""
    with captured_service_log(log_format="json") as capture:
        yield capture


def parsed(out: io.StringIO) -> list[dict[str, Any]]:
    """Every line as JSON (fails on the first that is not), each with the four keys."""
    entries = []
    for line in out.getvalue().splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= entry.keys(), line
        assert TIME.match(entry["time"]), entry["time"]
        entries.append(entry)
    return entries


def odd_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"secrets": (SecretStr(SECRET), SecretStr(ODD_SECRET))},
    )


def no_secret_in(text: str) -> None:
    for secret in (SECRET, ODD_SECRET, json.dumps(ODD_SECRET)[1:-1]):
        assert secret not in text
    assert "q" + '"uo' not in text and "uo\\\\te" not in text  # no half-masked remains


async def test_a_command_logs_json_lines_with_its_chain_and_no_secret(
    settings: Settings, json_log: Callable[[Settings], io.StringIO]
) -> None:
    settings = odd_settings(settings)
    out = json_log(settings)
    failure = ConnectionError(f"refused, key {SECRET} / {ODD_SECRET}")
    channel = RecordingChannel(fail_with=failure)
    async with Orchestrator(settings, channels=[channel]) as orch:
        await channel.say("tg:1001", "/nosuch")  # traced: its reply is a message_sent action
        await channel.say(
            "tg:1001", "/status"
        )  # untraced: the failure is logged with its traceback
        await orch.services.log.flush()
        text = out.getvalue()
        entries = parsed(out)
        (in_action,) = [
            e for e in entries if e["message"].startswith("sending to tg:1001 failed: ")
        ]
        assert in_action["level"] == "WARNING"
        assert in_action["logger"] == "assistant.orchestrator"
        assert "[REDACTED]" in in_action["message"]
        row = await orch.services.db.fetchone(
            "SELECT action_type, triggered_by FROM action_log WHERE id = ?",
            (decode(in_action["action_id"]),),
        )
        assert row is not None
        assert row["action_type"] == "message_sent"
        assert row["triggered_by"] == decode(in_action["event_id"])
        source = await orch.services.db.scalar(
            "SELECT summary FROM event_log WHERE id = ?", (row["triggered_by"],)
        )
        assert "/nosuch" in source

    (with_traceback,) = [e for e in entries if e["message"] == "sending to tg:1001 failed"]
    assert with_traceback["exc"].startswith("Traceback (most recent call last):")
    assert "ConnectionError: refused, key [REDACTED] / [REDACTED]" in with_traceback["exc"]
    assert "action_id" not in with_traceback and "event_id" not in with_traceback
    no_secret_in(text)


async def test_concurrent_actions_keep_their_own_ids(
    settings: Settings, event_log: EventLog, json_log: Callable[[Settings], io.StringIO]
) -> None:
    """Two actions interleaved on one loop: each line carries its own action, and none after."""
    out = json_log(settings)
    both_inside = asyncio.Barrier(2)

    async def act(name: str) -> int:
        event_id = event_log.log_event("test", name, summary=name)
        async with event_log.action(event_id, "command", target=name) as action:
            await both_inside.wait()  # the other task's action is open too
            log.info("in %s", name)
            async with event_log.tool_call(f"{name}.tool"):
                await asyncio.sleep(0)
                log.info("tool of %s", name)
            return action.id

    first, second = await asyncio.gather(act("first"), act("second"))
    log.info("after both")
    lines = {e["message"]: e for e in parsed(out)}
    for name, action_id in (("first", first), ("second", second)):
        for message in (f"in {name}", f"tool of {name}"):
            assert decode(lines[message]["action_id"]) == action_id
        event_id = decode(lines[f"in {name}"]["event_id"])
        assert lines[f"tool of {name}"]["event_id"] == lines[f"in {name}"]["event_id"]
        await event_log.flush()
        assert (
            await event_log._db.scalar(
                "SELECT triggered_by FROM action_log WHERE id = ?", (action_id,)
            )
            == event_id
        )
    assert "action_id" not in lines["after both"] and "event_id" not in lines["after both"]


def test_odd_secrets_are_masked_before_encoding(settings: Settings) -> None:
    """Quotes, backslashes, newlines and non-ASCII in a message: valid JSON, all masked."""
    settings = odd_settings(settings)
    formatter = JsonFormatter(shared_redactor(settings))
    message = f'a "quoted" {ODD_SECRET}\nsecond line \\ {SECRET} über'
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, message, (), None)
    line = formatter.format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == 'a "quoted" [REDACTED]\nsecond line \\ [REDACTED] über'
    no_secret_in(line)


def test_text_format_is_unchanged(
    settings: Settings, json_log: Callable[[Settings], io.StringIO]
) -> None:
    """The default stays the plain, redacted line."""
    root = logging.getLogger()
    _setup_logging(settings)
    (handler,) = root.handlers
    assert not isinstance(handler.formatter, JsonFormatter)
    assert handler.formatter is not None
    record = logging.LogRecord("x", logging.INFO, __file__, 1, f"key {SECRET}", (), None)
    assert handler.formatter.format(record).endswith(" INFO x: key [REDACTED]")


def test_assistant_up_writes_only_json_to_stderr(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {
        "ASSISTANT_LOG_FORMAT": "json",
        "ASSISTANT_LOG_LEVEL": "DEBUG",
        "ASSISTANT_HTTP": "127.0.0.1:0",
    }
    with running_service(home, **env) as proc:
        answer = cli(home, "send", "/status")
        assert answer.returncode == 0, answer.stderr
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = err.splitlines()
    entries = [json.loads(line) for line in lines]  # every line, or this fails
    messages = [e["message"] for e in entries]
    assert any(m.startswith("assistant is up: data in ") for m in messages), messages
    assert "assistant: stopping" in messages
    assert all(TIME.match(e["time"]) for e in entries)
    assert "sesame-1234-open" not in err  # the secret tests/service_process.py configures
