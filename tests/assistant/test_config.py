from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from assistant.client_config import configured_home, endpoint_path
from assistant.config import NOT_SETTINGS, load_settings, setting_names, unknown_settings
from assistant.errors import ConfigError


def load(**values: object) -> object:
    return load_settings(_env_file=None, **values)


@pytest.mark.parametrize(
    ("values", "named", "hint"),
    [
        ({"ASSISTANT_TIMEZONE": "Mars/Olympus"}, "ASSISTANT_TIMEZONE", "IANA name"),
        (
            {"ASSISTANT_ADMIN_CHATS": "12345"},
            "ASSISTANT_ADMIN_CHATS",
            "namespaced id like tg:12345",
        ),
        (
            {"event_log_retention_days": -1},
            "EVENT_LOG_RETENTION_DAYS",
            "greater than or equal to 0",
        ),
        ({"ASSISTANT_MISSED_RUN_POLICY": "sometimes"}, "ASSISTANT_MISSED_RUN_POLICY", "'grace'"),
        ({"ASSISTANT_LOCAL_PORT": 70000}, "ASSISTANT_LOCAL_PORT", "less than or equal to 65535"),
    ],
)
def test_a_bad_value_names_the_variable_and_what_is_right(
    values: dict[str, object], named: str, hint: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(**values)
    assert named in str(caught.value) and hint in str(caught.value)


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ASSISTANT_HOME", str(tmp_path))
    monkeypatch.setenv("ASSISTANT_ADMIN_CHATS", "tg:1, sl:C0123,dc:987")
    monkeypatch.setenv("EVENT_LOG_RETENTION_DAYS", "0")
    monkeypatch.setenv("ASSISTANT_SECRETS", "abcd1234,efgh5678")
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123:abc")
    settings = load_settings(_env_file=None)
    assert settings.db_path == tmp_path / "assistant.db"
    assert settings.admin_chats == ("tg:1", "sl:C0123", "dc:987")
    assert settings.event_log_retention_days == 0
    assert sorted(settings.secret_values()) == ["123:abc", "abcd1234", "efgh5678"]
    assert "123:abc" not in repr(settings)


def test_a_variable_meant_for_the_assistant_that_is_no_setting_is_named_with_the_closest(
    tmp_path: Path,
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "TELEGRAM_BOT_TOKN=123:abc\nHF_TOKEN=hf_x\nASSISTANT_GPUS=none\nassistant_modle=x\n"
    )
    environ = {
        "ASSISTANT_TIMEZON": "Europe/Berlin",
        "ASSISTANT_TIMEZONE": "Europe/Berlin",
        "ASSISTANT_DOCKERD_DIR": "/tmp/d",  # scripts/docker-engine's, not the service's
        "ASSISTANT_ZZZQQQ": "1",
        "PATH": "/usr/bin",
    }
    lines = unknown_settings(environ, env_file)
    assert len(lines) == 4, lines
    said = "\n".join(lines)
    assert "ASSISTANT_TIMEZON (in the environment)" in said
    assert "did you mean ASSISTANT_TIMEZONE?" in said
    assert f"TELEGRAM_BOT_TOKN (in {env_file})" in said and "TELEGRAM_BOT_TOKEN?" in said
    assert "assistant_modle" in said and "ASSISTANT_MODEL?" in said
    assert "ASSISTANT_ZZZQQQ" in said and "deploy/assistant.env.example" in said
    assert "HF_TOKEN" not in said and "DOCKERD" not in said
    assert unknown_settings({"ASSISTANT_GPUS": "none"}, None) == []


@pytest.mark.parametrize(
    ("environ", "dotenv"),
    [
        ({"ASSISTANT_HOME": "{tmp}/from-env"}, "ASSISTANT_HOME={tmp}/from-file\n"),
        ({"assistant_home": "{tmp}/lower"}, None),
        ({}, "ASSISTANT_HOME={tmp}/from-file\n"),
        ({}, "# nothing\n"),
        ({}, None),
    ],
)
def test_the_cli_client_finds_the_home_where_the_service_does(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    environ: dict[str, str],
    dotenv: str | None,
) -> None:
    """client_config reads ASSISTANT_HOME without pydantic; it must agree with Settings."""
    for name in [n for n in os.environ if n.upper() == "ASSISTANT_HOME"]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.chdir(tmp_path)
    for name, value in environ.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))
    if dotenv is not None:
        (tmp_path / ".env").write_text(dotenv.format(tmp=tmp_path))
    service = load_settings()  # reads .env in the working directory, as `assistant up` does
    assert configured_home() == service.assistant_home
    assert endpoint_path() == service.endpoint_path


def _names(text: str) -> set[str]:
    return set(re.findall(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b", text))


def test_the_env_example_lists_every_setting_the_readme_documents() -> None:
    root = Path(__file__).resolve().parents[2]
    known = setting_names()
    readme = _names((root / "README.md").read_text())
    example = _names((root / "deploy" / "assistant.env.example").read_text())
    documented = readme & known
    typo = {"ASSISTANT_TIMEZON"}  # the README's example of what is warned about
    assert {n for n in readme if n.startswith("ASSISTANT_")} - known - NOT_SETTINGS == typo
    assert documented - example == set(), "missing from deploy/assistant.env.example"
    assert example - known == set(), "in deploy/assistant.env.example but no setting"
