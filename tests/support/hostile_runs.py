"""Runs that attack the host through their run dir, under both runners."""

from __future__ import annotations

from pathlib import Path

from assistant.config import Settings
from assistant.runs.docker_runner import DockerRunner
from assistant.runs.process_runner import ProcessRunner
from tests.support.docker_engine import _docker_host
from tests.support.recording import RecordingChannel
from tests.support.run_flow import ADMIN, RUN_ID

FOREIGN_IMAGE = "assistant-base:bookworm"  # python3, and nothing of ours
RECIPES = """
[recipes.hostile]
summary = "a script that attacks the host through its run dir"
{image_line}
workdir = "{workdir}"
command = ["python3", "hostile.py", "{{run_dir}}"]
gpus = 0
time_limit = "5m"

[recipes.hostile.progress]
progress = ['iter (?P<step>\\d+): loss (?P<loss>[\\d.]+)']
total = 20

[recipes.hostile.resume]
checkpoints = "out/ckpt-*.json"
args = ["--resume={{checkpoint}}"]

[recipes.plain]
summary = "a well-behaved neighbour"
{image_line}
workdir = "{workdir}"
command = ["python3", "plain.py"]
gpus = 0

[recipes.plain.progress]
progress = ['iter (?P<step>\\d+): loss (?P<loss>[\\d.]+)']
total = 15
"""
PLAIN = """
import time
for i in range(1, 16):
    print(f"iter {i}: loss {1.0 / i:.4f}", flush=True)
    time.sleep(0.2)
"""


def declare(settings: Settings, tmp_path: Path, kind: str, script: str) -> Settings:
    root = tmp_path / "code"
    workdir = root / "hostile"
    workdir.mkdir(parents=True)
    (workdir / "hostile.py").write_text(script)
    (workdir / "plain.py").write_text(PLAIN)
    for path in (root, workdir):  # a container's user must read it
        path.chmod(0o755)
    for name in ("hostile.py", "plain.py"):
        (workdir / name).chmod(0o644)
    image_line = f'image = "{FOREIGN_IMAGE}"' if kind == "docker" else ""
    settings.assistant_home.mkdir(parents=True, exist_ok=True)
    (settings.assistant_home / "recipes.toml").write_text(
        RECIPES.format(image_line=image_line, workdir=workdir)
    )
    return settings.model_copy(
        update={
            "recipe_roots": (root,),
            "gpus": "none",
            "monitor_interval_s": 0.1,
            "stall_timeout_s": 120.0,
            "stop_grace_s": 30.0,
            "runner": kind,
        }
    )


def make_runner(settings: Settings) -> ProcessRunner | DockerRunner:
    if settings.runner == "docker":
        return DockerRunner(_docker_host())
    return ProcessRunner(settings.runs_dir)


async def launch(channel: RecordingChannel, text: str) -> str:
    (reply,) = await channel.say(ADMIN, text)
    match = RUN_ID.search(reply)
    assert match, reply
    return match.group(1)
