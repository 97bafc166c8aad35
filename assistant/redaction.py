"""Redaction and truncation of anything written to the event log (and later sent to a model).

Known token shapes are matched by pattern; configured secrets by their literal value, so a
secret with no recognisable shape is still caught.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable

MAX_CONTENT = 10 * 1024
MARK = "[REDACTED]"

# Shapes of credentials that should never be stored, whoever configured them.
_SHAPES = [
    r"\b\d{6,12}:[A-Za-z0-9_-]{30,}\b",  # Telegram bot token
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}",  # Slack bot/user tokens
    r"\bxapp-[A-Za-z0-9-]{10,}",  # Slack app-level token
    r"\bsk-ant-[A-Za-z0-9_-]{10,}",  # Anthropic
    r"\bsk-[A-Za-z0-9_-]{20,}",  # OpenAI-style keys
    r"\bgh[pousr]_[A-Za-z0-9]{30,}",  # GitHub
    r"\bhf_[A-Za-z0-9]{30,}",  # Hugging Face
    r"\bAKIA[0-9A-Z]{16}\b",  # AWS access key id
    r"\b[MN][A-Za-z\d_-]{23,}\.[\w-]{6}\.[\w-]{27,}",  # Discord bot token
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
]
# `Authorization: Bearer x`, `"api_key": "x"`, `password=x`: keep the name, drop the value.
_LABELLED = re.compile(
    r"""(?ix)
    ( (?:authorization|proxy-authorization) ["']?\s*[:=]\s*["']?
        (?:bearer\s+|basic\s+|bot\s+)?
    | \b[\w-]*(?:api[_-]?key|secret|token|passw(?:or)?d)["']?\s*[:=]\s*["']?
    )
    ( [^\s"',;}]{3,} )
    """
)


# Every shape above has a run of 16+ token characters or a telling word; text with neither
# (most chat messages) skips the full patterns. One cheap scan instead of two costly ones.
_SUSPECT = r"[A-Za-z0-9_.+/=-]{16,}|(?i:authoriz|api.?key|secret|token|passw|private key)"


class Redactor:
    """Callable that masks secrets in text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        literal = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
        escaped = [re.escape(s) for s in literal]
        self._shapes = re.compile("|".join(escaped + _SHAPES))
        self._suspect = re.compile("|".join([*escaped, _SUSPECT]))

    def __call__(self, text: str) -> str:
        if self._suspect.search(text) is None:
            return text
        text = self._shapes.sub(MARK, text)
        return _LABELLED.sub(lambda m: m.group(1) + MARK, text)

    def clean(self, value: object) -> str | None:
        """Stored form of any value: JSON for structures, redacted, then cut at 10 KB."""
        if value is None:
            return None
        text = value if isinstance(value, str) else to_json(value)
        return truncate(self(text))


def to_json(value: object) -> str:
    return json.dumps(value, default=_plain, ensure_ascii=False, separators=(",", ":"))


def _plain(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


def truncate(text: str, limit: int = MAX_CONTENT) -> str:
    """Cut to `limit` bytes of UTF-8 at a character boundary, saying that it was cut."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    marker = f"…[truncated {len(data) - limit} bytes]"
    return data[: limit - len(marker.encode())].decode("utf-8", "ignore") + marker
