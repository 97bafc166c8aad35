"""Starting `assistant up` and waiting until it serves or exits."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.service_process import start_service

LOCAL = {"ASSISTANT_RUNNER": "process", "ASSISTANT_GPUS": "none"}


def start(home: Path) -> subprocess.Popen[str]:
    return start_service(home, **LOCAL)
