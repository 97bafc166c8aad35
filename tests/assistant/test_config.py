from __future__ import annotations

from pathlib import Path

import pytest

from assistant.config import load_settings
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
