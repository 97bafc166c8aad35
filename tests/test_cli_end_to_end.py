"""The whole local-channel path: `assistant up` in a subprocess, `assistant send` against it."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.service_process import ROOT, cli, env_for, running_service


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    home = tmp_path / "home"
    with running_service(home) as proc:
        yield home, proc


def test_send_gets_answers_from_a_running_service(
    service: tuple[Path, subprocess.Popen[str]],
) -> None:
    home, proc = service
    endpoint = home / "local-channel.json"
    assert endpoint.stat().st_mode & 0o777 == 0o600
    port = json.loads(endpoint.read_text())["port"]

    status = cli(home, "send", "/status")
    assert status.returncode == 0, status.stderr
    assert "Uptime:" in status.stdout and "Timezone: Europe/Berlin" in status.stdout
    assert "local (connected)" in status.stdout

    added = cli(home, "send", "/task add every 2h /status")
    assert added.returncode == 0 and "every 2h" in added.stdout

    bad = cli(home, "send", "/task add every soon /status")
    assert bad.returncode == 0 and "Usage:" in bad.stdout

    text = cli(home, "send", "what is the loss? my password is sesame-1234-open")
    assert "No model is configured" in text.stdout

    why = cli(home, "send", "/debug why")
    assert "Why message_sent (ok):" in why.stdout and "event message_batch" in why.stdout

    # The port is loopback only, and a client without the token is refused.
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b'{"token": "guess"}\n')
        assert b"bad token" in sock.recv(1000)

    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "sesame-1234-open" not in err  # secrets never reach the log
    assert not endpoint.exists()
    conn = sqlite3.connect(home / "assistant.db")
    try:
        # The writer was flushed on shutdown: the last event is the stop itself.
        last = conn.execute("SELECT summary FROM event_log ORDER BY id DESC LIMIT 1").fetchone()[0]
        tasks = conn.execute("SELECT count(*) FROM tasks").fetchone()[0]
        commands_stored = conn.execute(
            "SELECT count(*) FROM messages WHERE text LIKE '/%'"
        ).fetchone()[0]
        logged = " ".join(
            r[0] or "" for r in conn.execute("SELECT raw_content FROM event_log")
        ) + " ".join(r[0] for r in conn.execute("SELECT summary FROM event_log"))
    finally:
        conn.close()
    assert last == "assistant stopped"
    assert tasks == 1 and commands_stored == 0
    assert "my password is [REDACTED]" in logged and "sesame-1234-open" not in logged


# What the everyday client must never load: each costs tens to hundreds of ms at start.
HEAVY = (
    "anthropic",
    "docker",
    "telegram",
    "slack_sdk",
    "discord",
    "matplotlib",
    "torch",
    "pydantic",
    "aiosqlite",
    "assistant.orchestrator",
    "assistant.services",
)
_SEND_AND_LIST_MODULES = """
import json, sys
from assistant.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def test_send_loads_only_the_client(service: tuple[Path, subprocess.Popen[str]]) -> None:
    """A real `assistant send /status` round trip, in a fresh interpreter, then its modules."""
    home, _ = service
    done = subprocess.run(
        [sys.executable, "-c", _SEND_AND_LIST_MODULES, "send", "/status"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=env_for(home),
    )
    *reply, last = done.stdout.strip().splitlines()
    outcome = json.loads(last)
    assert outcome["code"] in (0, None), done.stderr
    assert "Uptime:" in "\n".join(reply)  # it did the whole round trip
    loaded = [
        name
        for name in outcome["modules"]
        if any(name == heavy or name.startswith(heavy + ".") for heavy in HEAVY)
    ]
    assert loaded == []


def test_chat_is_an_interactive_prompt(service: tuple[Path, subprocess.Popen[str]]) -> None:
    home, _ = service
    chat = subprocess.run(
        [sys.executable, "-m", "assistant", "chat"],
        input="/help\n/task add every 1h /status\n",
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=env_for(home),
    )
    assert chat.returncode == 0, chat.stderr
    assert "Connected." in chat.stderr
    assert "/debug" in chat.stdout and "every 1h" in chat.stdout


def test_send_without_a_service_fails_clearly(tmp_path: Path) -> None:
    result = cli(tmp_path / "nowhere", "send", "/status")
    assert result.returncode == 1
    assert "no assistant is running" in result.stderr and "assistant up" in result.stderr


def test_bad_configuration_names_the_variable(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    env["ASSISTANT_TIMEZONE"] = "Mars/Olympus"
    result = subprocess.run(
        [sys.executable, "-m", "assistant", "up"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 2
    assert "ASSISTANT_TIMEZONE" in result.stderr and "Mars/Olympus" in result.stderr


def test_a_mistyped_setting_is_warned_about_at_start_with_the_closest_name(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    with running_service(home, ASSISTANT_TIMEZON="Asia/Tokyo") as proc:
        status = cli(home, "send", "/status")
        assert "Timezone: Europe/Berlin" in status.stdout  # the typo changed nothing...
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    # ...and was said: the variable, that it is ignored, and what was meant.
    assert "assistant: warning: ASSISTANT_TIMEZON (in the environment) is not a setting" in err
    assert "did you mean ASSISTANT_TIMEZONE?" in err


def test_version_and_shell_completion(tmp_path: Path) -> None:
    version = cli(tmp_path, "--version")
    assert version.returncode == 0 and version.stdout.startswith("assistant, version ")
    env = env_for(tmp_path, _ASSISTANT_COMPLETE="bash_source")
    script = subprocess.run(
        [str(Path(sys.executable).with_name("assistant"))],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert script.returncode == 0, script.stderr
    assert "complete -o nosort -F _assistant_completion assistant" in script.stdout
    env.update(_ASSISTANT_COMPLETE="bash_complete", COMP_WORDS="assistant in", COMP_CWORD="1")
    words = subprocess.run(
        [str(Path(sys.executable).with_name("assistant"))],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert "plain,inbox" in words.stdout.splitlines()  # it completes the subcommands
