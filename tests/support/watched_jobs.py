"""Jobs launched the way a user launches them, outside the assistant, for /watch to follow.

A job is a real process (here, or in a container) running `JOB`: it waits for a `go`
file (so a test can attach before anything is printed), prints report lines through the
real reporting helper and lines a declared recipe's regexes match, then ends with the
exit code it was given.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from assistant.config import Settings

REPO = Path(__file__).resolve().parents[2]
ADMIN = "tg:1001"
STRANGER = "tg:2002"

JOB = r"""
import os, sys, time
sys.path.insert(0, os.environ["REPO"])
from assistant.jobs.reporting import metric, progress

go, steps, code = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
hostile = len(sys.argv) > 4 and sys.argv[4] == "hostile"
print("job up", flush=True)
while not os.path.exists(go):
    time.sleep(0.02)
if hostile:
    out = sys.stdout.buffer
    out.write(b"bad utf-8 \xff\xfe\xc3( and NUL \x00 here\n")
    out.write(b"x" * (10 * 1024 * 1024) + b"\n")
    out.flush()
for step in range(1, steps + 1):
    progress(step, total=steps, loss=1.0 / step)
    if step % 5 == 0:
        metric("val_loss", 2.0 / step, step=step)
    print(f"iter {step}: loss {1.0 / step:.4f}, time 1.0ms", flush=True)
    time.sleep(0.01)
print("plain last line", flush=True)
sys.exit(code)
"""

# A declared recipe whose progress regexes read JOB's `iter` lines (pattern=tinyjob).
RECIPES = r"""
[recipes.tinyjob]
summary = "a job of the user's own"
command = ["python3", "train.py"]
gpus = 0
key_metric = "iter_loss"

[recipes.tinyjob.progress]
progress = ['iter (?P<step>\d+): loss (?P<iter_loss>[\d.]+), time (?P<time_ms>[\d.]+)ms']
"""


@dataclass
class Job:
    proc: subprocess.Popen[bytes]
    go: Path
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> None:
        self.go.write_text("go")

    def reap(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)


def start_job(
    folder: Path,
    *,
    steps: int = 20,
    code: int = 0,
    hostile: bool = False,
    stdout_to_log: bool = True,
) -> Job:
    """A job writing to `folder/job.log` (its stdout, or a file it is told of)."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "job.py"
    script.write_text(JOB)
    log = folder / "job.log"
    go = folder / "go"
    argv = [sys.executable, str(script), str(go), str(steps), str(code)]
    if hostile:
        argv.append("hostile")
    env = {**os.environ, "REPO": str(REPO), "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out if stdout_to_log else subprocess.DEVNULL, env=env)
    return Job(proc, go, log)


def watch_settings(settings: Settings, **extra: object) -> Settings:
    """Settings with a quick watch pass (and whatever a test adds)."""
    return settings.model_copy(update={"watch_interval_s": 0.1, **extra})


def watch_id_of(reply: str) -> str:
    """`Watch ab12cd: ...` -> ab12cd."""
    assert reply.startswith("Watch "), reply
    return reply.split()[1].rstrip(":")


async def wait_until(probe, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not await probe():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


# The same job in a container started with `docker run`, as a user would: the reporting
# helper copied beside it (mounted read-only), the go file in a mounted folder.
CONTAINER_BASES = ("assistant-base:bookworm", "assistant-run:latest")
CONTAINER_JOB = r"""
import os, signal, sys, time
sys.path.insert(0, "/opt/job")
from reporting import metric, progress

steps, code, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # pid 1 has no default action
print("job up", flush=True)
while not os.path.exists("/go/go"):
    time.sleep(0.02)
if mode == "hostile":
    out = sys.stdout.buffer
    out.write(b"bad utf-8 \xff\xfe\xc3( and NUL \x00 here\n")
    out.write(b"x" * (10 * 1024 * 1024) + b"\n")
    out.flush()
if mode == "oom":
    blocks = [b"\x01" * (10 << 20) for _ in range(60)]
if mode == "sleep":
    time.sleep(120)
for step in range(1, steps + 1):
    progress(step, total=steps, loss=1.0 / step)
    if step % 5 == 0:
        metric("val_loss", 2.0 / step, step=step)
    time.sleep(0.01)
print("plain last line", flush=True)
sys.exit(code)
"""


@dataclass
class ContainerJob:
    name: str
    go: Path

    def start(self) -> None:
        self.go.write_text("go")


def container_base(engine) -> str:  # type: ignore[no-untyped-def]
    for base in CONTAINER_BASES:
        if engine.images.list(name=base):
            return base
    raise AssertionError(
        f"none of {', '.join(CONTAINER_BASES)} is on the engine; build with deploy/build-images.sh"
    )


def docker_run(
    image: str,
    folder: Path,
    *,
    steps: int = 20,
    code: int = 0,
    mode: str = "plain",
    create_only: bool = False,
    extra: tuple[str, ...] = (),
) -> ContainerJob:
    """`docker run -d` (or `docker create`) of CONTAINER_JOB, labelled as a test's."""
    from tests.support.docker_engine import TEST_LABEL

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.py").write_text(CONTAINER_JOB)
    go = folder / "go"
    go.mkdir(mode=0o777)
    name = f"watch-test-{os.urandom(4).hex()}"
    argv = [
        "docker",
        "create" if create_only else "run",
        *(() if create_only else ("-d",)),
        "--name",
        name,
        "--label",
        f"{TEST_LABEL}=1",
        "--network",
        "none",
        "-v",
        f"{REPO / 'assistant/jobs/reporting.py'}:/opt/job/reporting.py:ro",
        "-v",
        f"{folder / 'job.py'}:/opt/job/job.py:ro",
        "-v",
        f"{go}:/go:ro",
        *extra,
        image,
        "python3",
        "-u",
        "/opt/job/job.py",
        str(steps),
        str(code),
        mode,
    ]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    return ContainerJob(name, go / "go")
