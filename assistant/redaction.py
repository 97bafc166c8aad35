"""Redaction and truncation of anything stored, sent to a chat or sent to the model.

Known token shapes are matched by pattern; configured secrets, and every file in the
secrets folder (what declared recipes hand to their runs), by their literal value, so a
secret with no recognisable shape is still caught. One `Redactor` serves the whole process
(the event log, the service log, messages, replies, the model): see
`assistant.services.shared_redactor`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
import threading
import time
from collections.abc import Iterable
from pathlib import Path

MAX_CONTENT = 10 * 1024
MARK = "[REDACTED]"
SECRET_FILE_LIMIT = 64 * 1024  # bytes read of one secret file: more is not a token
RECHECK_S = 0.5  # how often the secrets folder is looked at for new or changed files
_MIN_SECRET = 4  # shorter literals would mask ordinary words
_MIN_LINE = 12  # a line of a multi-line secret file that is masked on its own

# Shapes of credentials that should never be stored, whoever configured them. Each is a run
# of 16+ token characters (`_LONG`), so they are only tried on such runs, never on prose.
_SHAPES = [
    r"\b\d{6,12}:[A-Za-z0-9_-]{30,}\b",  # Telegram bot token
    r"\bxox[abposre]-[A-Za-z0-9-]{10,}",  # Slack bot/user/refresh tokens
    r"\bxapp-[A-Za-z0-9-]{10,}",  # Slack app-level token
    r"\bsk-ant-[A-Za-z0-9_-]{10,}",  # Anthropic
    r"\bsk-[A-Za-z0-9_-]{20,}",  # OpenAI-style keys (sk-proj-..., sk-svcacct-...)
    r"\bgh[pousr]_[A-Za-z0-9]{30,}",  # GitHub classic tokens
    r"\bgithub_pat_[A-Za-z0-9_]{20,}",  # GitHub fine-grained tokens (underscore inside)
    r"\bglpat-[A-Za-z0-9_-]{20,}",  # GitLab
    r"\bhf_[A-Za-z0-9]{30,}",  # Hugging Face
    r"\bnpm_[A-Za-z0-9]{36}\b",  # npm
    r"\bpypi-[A-Za-z0-9_-]{40,}",  # PyPI
    r"\bAIza[0-9A-Za-z_-]{35}",  # Google API key
    r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}",  # Stripe
    r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA|ASCA)[0-9A-Z]{16}\b",  # AWS
    r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",  # JWT (signature may be empty)
    r"\b[MN][A-Za-z\d_-]{23,}\.[\w-]{6}\.[\w-]{27,}",  # Discord bot token
]
_TOKEN_SHAPES = re.compile("|".join(_SHAPES))
_LONG = re.compile(r"[A-Za-z0-9_.+/:=-]{16,}")  # a run that may hold one of the shapes
_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)"
)
# `Authorization: Bearer x`, `"api_key": "x"`, `HF_TOKEN=x`, `password=x`, a bare `Bearer x`
# (with a digit in x, so "the bearer of" stays): keep the name, drop the value. Whatever
# stands before the telling word stays as it is, so the pattern starts at that word.
_LABELLED = re.compile(
    r"""(?ix)
    ( authorization ["']?\s*[:=]\s*["']? (?:bearer\s+|basic\s+|bot\s+)?
    | (?:api[_-]?key|access[_-]?key|secret|token|passw(?:or)?d) ["']?\s*[:=]\s*["']?
    | \bbearer\s+(?=[\w.~+/=-]*\d)
    )
    ( [^\s"',;}]{3,} )
    """
)
_URL_PASSWORD = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)([^/\s@]{3,})(?=@)")


# Every shape above has a run of 16+ token characters or a telling word; text with neither
# (most chat messages) skips the full patterns. One cheap scan instead of several costly ones.
_SUSPECT = re.compile(
    r"[A-Za-z0-9_.+/:=-]{16,}|(?i:authoriz|bearer|api.?key|access.?key|secret|token|passw"
    r"|private key)|://[^/\s@]+@"
)


class Redactor:
    """Callable that masks secrets in text; safe to call from any thread.

    `secrets_dir`: every regular file in it is a secret too (read bounded, links followed
    as the launch does, FIFOs and devices never opened). The folder is looked at again at
    most every `recheck_s` seconds: a file added or rewritten while the service runs is
    known within that time, and at once when it was there at start.
    """

    def __init__(
        self,
        secrets: Iterable[str] = (),
        *,
        secrets_dir: Path | None = None,
        recheck_s: float = RECHECK_S,
    ) -> None:
        self._configured = tuple(secrets)
        self._dir = secrets_dir
        self._recheck_s = recheck_s
        self._next_check = 0.0
        self._dir_state: object = None
        self._refreshing = threading.Lock()
        self._literals = _literals(self._configured)
        if secrets_dir is not None:
            self._look_at_dir()

    def __call__(self, text: str) -> str:
        if self._dir is not None and time.monotonic() >= self._next_check:
            self._look_at_dir()
        for secret in self._literals:  # one read: a refresh in another thread swaps it whole
            if secret in text:  # a scan in C: cheaper than any pattern
                text = text.replace(secret, MARK)
        if _SUSPECT.search(text) is None:
            return text
        text = _LONG.sub(_mask_shapes, text)
        if "PRIVATE KEY-----" in text:
            text = _PRIVATE_KEY.sub(MARK, text)
        text = _LABELLED.sub(_keep_label, text)
        if "://" in text:
            text = _URL_PASSWORD.sub(_keep_label, text)
        return text

    def clean(self, value: object) -> str | None:
        """Stored form of any value: JSON for structures, redacted, then cut at 10 KB."""
        if value is None:
            return None
        text = value if isinstance(value, str) else to_json(value)
        return truncate(self(text))

    def _look_at_dir(self) -> None:
        """Re-read the secrets folder if a file in it was added, removed or changed."""
        if self._dir is None or not self._refreshing.acquire(blocking=False):
            return  # another thread is at it; the values it reads serve the next call
        try:
            self._next_check = time.monotonic() + self._recheck_s
            state = _dir_state(self._dir)
            if state == self._dir_state:
                return
            self._dir_state = state
            self._literals = _literals((*self._configured, *_dir_secrets(self._dir)))
        finally:
            self._refreshing.release()


def _keep_label(match: re.Match[str]) -> str:
    return match.group(1) + MARK


def _mask_shapes(run: re.Match[str]) -> str:
    return _TOKEN_SHAPES.sub(MARK, run.group())


def _literals(secrets: Iterable[str]) -> tuple[str, ...]:
    """The values to mask as they are, longest first (a secret inside another goes after)."""
    found = {s for s in _variants(secrets) if len(s) >= _MIN_SECRET}
    return tuple(sorted(found, key=len, reverse=True))


def _variants(secrets: Iterable[str]) -> Iterable[str]:
    """A secret as it is configured and as it appears in JSON (quotes, backslashes escaped)."""
    for secret in secrets:
        yield secret
        yield json.dumps(secret, ensure_ascii=False)[1:-1]


def _dir_state(folder: Path) -> object:
    """What changes when a secret file is added, removed, replaced or rewritten in place."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return None
    state = []
    for entry in entries:
        try:
            info = entry.stat()  # follows a link, as the launch's read does
        except OSError:
            continue
        state.append((entry.name, info.st_ino, info.st_mtime_ns, info.st_size, info.st_mode))
    return sorted(state)


def _dir_secrets(folder: Path) -> list[str]:
    """The values of the regular files in the folder, and each long line of one that has
    several (a key file whose lines a run might print one by one)."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    values: list[str] = []
    for name in names:
        data = _read_regular(folder / name)
        if data is None:
            continue
        text = data.decode("utf-8", "replace")
        values += [text.rstrip("\r\n"), text.strip()]  # as the run's environment gets it
        lines = [line.strip() for line in text.splitlines()]
        if len(lines) > 1:
            values += [line for line in lines if len(line) >= _MIN_LINE]
    return values


def _read_regular(path: Path) -> bytes | None:
    """At most SECRET_FILE_LIMIT bytes of a regular file; None for anything else."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None  # a FIFO or device is never opened
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, SECRET_FILE_LIMIT)
    except OSError:
        return None
    finally:
        os.close(fd)


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
