"""Where a CLI client finds the running service, read without the settings model.

`assistant send`, `chat` and `inbox` need one setting, ASSISTANT_HOME (the endpoint file
lives there). Importing pydantic-settings to read it costs more than the whole round trip
may take, so it is read here as `Settings` reads it: the environment first (any case),
then `.env` in the working directory, then `~/.assistant`. tests/assistant/test_config.py
holds the two readings equal.
"""

from __future__ import annotations

import os
from pathlib import Path

ENDPOINT_NAME = "local-channel.json"
_HOME = "ASSISTANT_HOME"


def configured_home() -> Path:
    """ASSISTANT_HOME as `assistant up` would read it in this directory."""
    for name, value in os.environ.items():
        if name.upper() == _HOME:
            return Path(value)
    if Path(".env").is_file():
        from dotenv import dotenv_values  # only when there is a file to read

        for name, found in dotenv_values(".env", encoding="utf-8").items():
            if name.upper() == _HOME and found is not None:
                return Path(found)
    return Path.home() / ".assistant"


def endpoint_path() -> Path:
    """Port and token of the running local channel (`Settings.endpoint_path`)."""
    return configured_home() / ENDPOINT_NAME
