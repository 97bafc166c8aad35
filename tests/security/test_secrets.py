"""No planted secret is stored, logged, sent to a chat or sent to the model.

Each kind is planted through the real paths: a configured secret (ASSISTANT_SECRETS), a
secret a declared recipe hands to its run (which the run prints), tokens of every common
shape pasted into chat (as conversation and inside a scheduled task), and a bare
`Bearer <JWT>`. Then the whole database (every table, dumped), the service log (through
the formatter `assistant up` installs, at DEBUG), every reply and progress edit, and
every request the model's server received are searched for each value.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from assistant.cli import RedactingFormatter, _setup_logging
from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from assistant.runs.process_runner import ProcessRunner
from assistant.services import shared_redactor
from tests.fakes.anthropic_server import FakeAnthropic, ToolUse
from tests.fakes.anthropic_server import Reply as Answer
from tests.support.model_service import API_KEY, model_settings
from tests.support.recording import RecordingChannel
from tests.support.service_log import captured_service_log

ADMIN = "tg:1001"
RUN_ID = re.compile(r"^Run ([0-9a-z]{6}):", re.M)
CONFIGURED = "hunter2-secret-value"  # the test settings' ASSISTANT_SECRETS
RUN_SECRET = "run-only-Zq8xV3mN"  # no token shape: only its value can give it away
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwi"
    "aWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
BEARER_JWT = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJpc3MiOiJodHRwczovL2lkLmV4YW1wbGUuY29tIiwiZXhwIjo5"
    "OTk5OTk5OTk5fQ.c2lnbmF0dXJlLWJ5dGVzLWhlcmUtMDEyMzQ1Njc4OQ"
)
# Realistic examples of each shape (the lengths and alphabets the issuers use).
TOKENS = {
    "jwt": JWT,
    "github classic": "ghp_R7mZ2xQ9vL4kP1sT8wN3yB6cF0hJ5dG2aE9u",
    "github fine-grained": "github_pat_11AHZ4K3I0qLm8sNwXyZaB_"
    "pQ7rS2tU9vW4xY1zA6bC3dE8fG5hJ0kL7mN2oP9qR4sT1uV6wX3yZ8aB5cD0eF",
    "hugging face": "hf_kLmNoPqRsTuVwXyZaBcDeFgHiJkLmNoPqR",
    "anthropic": "sk-ant-api03-Xy7_kQ2-mN9vB4cL1pR8sT3wZ6aD0fG5hJ2kL9nM4qR7tV1xY8zB3cF6gH0jK"
    "5mN2pQ9sT4vW7yZ1bD6eG3hJ8kM0nP5qS2tV9wX4zA7cE1fH6jK3mN8pQ0sT5vW2yA-bCdEfAA",
    "openai": "sk-proj-Ab3Cd5Ef7Gh9Ij1Kl3Mn5Op7Qr9St1Uv3Wx5Yz7Ab9Cd1Ef3Gh5Ij7Kl9Mn1_Op3Qr5St7",
    "slack bot": "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "slack user": "xoxp-123456789012-123456789012-1234567890123-0123456789abcdef0123456789abcdef",
    "slack app": "xoxa-2-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "aws access key": "AKIAIOSFODNN7EXAMPLE",
    "aws temporary key": "ASIAJ3EXAMPLE7QWERTY",
}
PLANTED = {"configured": CONFIGURED, "bare bearer jwt": BEARER_JWT, **TOKENS}

LEAK_SCRIPT = """
import hashlib, os, sys, time
token = os.environ["HF_TOKEN"]
print("got sha256 " + hashlib.sha256(token.encode()).hexdigest(), flush=True)
print("starting with HF_TOKEN=" + token, flush=True)
sys.stdout.write("split " + token[:6]); sys.stdout.flush(); time.sleep(0.1)
print(token[6:] + " across two writes", flush=True)
print("the value again: " + token, flush=True)
sys.exit(3)
"""


def declare_leaky_recipe(settings: Settings, tmp_path: Path) -> Settings:
    """A declared recipe whose code prints the secret it is handed, then fails."""
    root = tmp_path / "code"
    workdir = root / "leaky"
    workdir.mkdir(parents=True)
    (workdir / "leak.py").write_text(LEAK_SCRIPT)
    home = settings.assistant_home
    home.mkdir(parents=True, exist_ok=True)
    (home / "recipes.toml").write_text(
        f"""
[recipes.leaky]
summary = "prints the secret it is handed"
workdir = "{workdir}"
command = ["python3", "leak.py"]
gpus = 0
secrets = {{ HF_TOKEN = "hf_token" }}
"""
    )
    secrets = home / "secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "hf_token").write_text(RUN_SECRET + "\n")
    (secrets / "hf_token").chmod(0o600)
    return settings.model_copy(
        update={"recipe_roots": (root,), "monitor_interval_s": 0.1, "log_level": "DEBUG"}
    )


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as server:
        yield server


@pytest.fixture
def service_log() -> Iterator[Callable[[Settings], io.StringIO]]:
    """What `assistant up` would write to stderr: its own logging set-up, at DEBUG."""
    with captured_service_log() as capture:
        yield capture


def database_dump(path: Path) -> str:
    """Every row of every table, as SQL text."""
    conn = sqlite3.connect(path)
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()


def model_traffic(fake: FakeAnthropic) -> str:
    """Every request body, and every header but the key the client must send."""
    parts = []
    for request in fake.requests:
        parts.append(repr(request.body))
        parts += [f"{k}: {v}" for k, v in request.headers.items() if v != API_KEY]
    return "\n".join(parts)


def sent_to_chat(channel: RecordingChannel) -> str:
    return "\n".join([t for _, t in channel.sent] + [t for _, _, t in channel.edits])


def leaks(places: dict[str, str], planted: dict[str, str]) -> list[str]:
    """Each planted value found, where, with the text around it."""
    found = []
    for place, text in places.items():
        for kind, value in planted.items():
            at = text.find(value)
            if at >= 0:
                found.append(f"{kind} in {place}: …{text[max(at - 120, 0) : at + 40]}…")
    return found


async def test_pasted_and_configured_secrets_reach_no_table_log_chat_or_model(
    settings: Settings, fake: FakeAnthropic, service_log: Callable[[Settings], io.StringIO]
) -> None:
    settings = model_settings(settings, fake)
    log = service_log(settings)
    pasted = " ".join(f"{kind}: {value}" for kind, value in TOKENS.items())
    channel = RecordingChannel()
    async with Orchestrator(settings, channels=[channel]) as orch:
        # The model repeats what it was given (it should not, but nothing relies on it).
        fake.add(Answer(f"Noted {TOKENS['github classic']} and {CONFIGURED}."))
        await channel.say(
            ADMIN,
            f"my password is {CONFIGURED}, and the keys: {pasted}. "
            f"curl -H 'X-Auth: Bearer {BEARER_JWT}' https://api.example.com",
        )
        (added,) = await channel.say(
            ADMIN, f'/task add every 1h "deploy with {TOKENS["hugging face"]} and {CONFIGURED}"'
        )
        task_id = re.search(r"Task (\w+) scheduled", added)
        assert task_id is not None, added
        fake.add(Answer("Done."))
        await channel.say(ADMIN, f"/task run {task_id.group(1)}")
        await channel.wait_for("Done.", timeout=10)
        await channel.say(ADMIN, f"/task add every 2h /status {TOKENS['aws access key']}")
        fake.add(Answer("Hello."))  # a sender's display name is outside text too
        await channel.say(ADMIN, "hello", sender=f"ann {TOKENS['slack app']}")
        await orch.services.log.flush()
        dump = database_dump(settings.db_path)

    assert len(fake.requests) == 3  # the conversation, the scheduled prompt, the hello
    assert "[REDACTED]" in repr(fake.requests[0].body)  # redacted, not left out
    places = {
        "database": dump,
        "service log": log.getvalue(),
        "chat": sent_to_chat(channel),
        "model": model_traffic(fake),
    }
    found = leaks(places, PLANTED)
    assert not found, "\n".join(found)
    assert "anthropic" in log.getvalue()  # the model client's requests were logged
    assert "deploy with [REDACTED] and [REDACTED]" in dump  # the task itself is kept


async def test_a_secret_handed_to_a_run_is_masked_in_logs_reports_and_the_model(
    settings: Settings,
    fake: FakeAnthropic,
    service_log: Callable[[Settings], io.StringIO],
    tmp_path: Path,
) -> None:
    settings = declare_leaky_recipe(model_settings(settings, fake), tmp_path)
    log = service_log(settings)
    channel = RecordingChannel()
    runner = ProcessRunner(settings.runs_dir)
    async with Orchestrator(settings, channels=[channel], runner=runner) as orch:
        (reply,) = await channel.say(ADMIN, "/run train leaky")
        match = RUN_ID.search(reply)
        assert match is not None, reply
        run_id = match.group(1)
        report = await channel.wait_for(f"Run {run_id} (leaky) failed", timeout=60)
        assert "starting with HF_TOKEN=[REDACTED]" in report  # the report still quotes it

        (logs,) = await channel.say(ADMIN, f"/run logs {run_id}")
        assert "the value again: [REDACTED]" in logs, logs

        fake.add(
            Answer([ToolUse("tu_1", "run_logs", {"run_id": run_id})]),
            Answer("It printed its token."),
        )
        assert await channel.say(ADMIN, f"why did {run_id} fail?") == ["It printed its token."]
        (result,) = fake.requests[-1].body["messages"][-1]["content"]
        assert "the value again: [REDACTED]" in result["content"], result

        await orch.services.log.flush()
        dump = database_dump(settings.db_path)
        run_dir = orch.services.runs.run_dir(run_id)
        stdout = (run_dir / "stdout.log").read_text()
        holding = sorted(
            str(path.relative_to(run_dir))
            for path in run_dir.rglob("*")
            if path.is_file() and RUN_SECRET.encode() in path.read_bytes()
        )
        host_written = [p for p in ("spec.json", "control.json") if (run_dir / p).exists()]

    # The run got the value (its hash), printed it (whole, and split over two writes), and
    # the agent wrote its output masked: no file in the run dir holds it.
    assert f"got sha256 {hashlib.sha256(RUN_SECRET.encode()).hexdigest()}" in stdout
    assert "HF_TOKEN=[REDACTED]" in stdout and "split [REDACTED] across" in stdout, stdout
    assert holding == [], holding
    assert "spec.json" in host_written
    places = {
        "database": dump,
        "service log": log.getvalue(),
        "chat": sent_to_chat(channel),
        "model": model_traffic(fake),
    }
    found = leaks(places, {"run secret": RUN_SECRET})
    assert not found, "\n".join(found)
    tools = re.findall(r"INSERT INTO \"?tool_call_log\"? VALUES\(.*", dump)
    assert any("run_logs" in row and "[REDACTED]" in row for row in tools)


async def test_the_process_has_one_redactor(settings: Settings) -> None:
    """The log formatter, the services and every later call share one object."""
    redactor = shared_redactor(settings)
    assert shared_redactor(settings.model_copy()) is redactor
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        _setup_logging(settings)
        (handler,) = root.handlers
        assert isinstance(handler.formatter, RedactingFormatter)
        assert handler.formatter.redactor is redactor
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    async with Orchestrator(settings, channels=[RecordingChannel()]) as orch:
        assert orch.services.redactor is redactor
    other = settings.model_copy(update={"secrets": (SecretStr("another-secret"),)})
    assert shared_redactor(other) is not redactor
