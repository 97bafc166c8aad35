"""The service log as `assistant up` sets it up, written to a string for a test to read."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from assistant.cli import _setup_logging
from assistant.config import Settings


@contextmanager
def captured_service_log(**overrides: Any) -> Iterator[Callable[[Settings], io.StringIO]]:
    """Yields `capture(settings)`: the real logging set-up at DEBUG (plus `overrides`),
    its one handler pointed at a StringIO; the root logger is restored afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)

    def capture(settings: Settings) -> io.StringIO:
        _setup_logging(settings.model_copy(update={"log_level": "DEBUG", **overrides}))
        out = io.StringIO()
        (handler,) = root.handlers
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(out)
        return out

    try:
        yield capture
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        logging.captureWarnings(False)
