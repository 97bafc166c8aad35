"""deploy/compose.yaml for real: the orchestrator's image built offline, started as the
compose file says (`docker compose` where the machine has it, else deploy/compose_run.py,
which reads the same file), a classifier run sent through `docker exec ... assistant
send`, and its report read back from the local outbox.

Before, the service in its container asked the engine to mount /data/runs/<id>, which the
engine resolved on the host: the run wrote where the service never reads (and the
container's user could not reach the socket at all).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from assistant.jobs.protocol import CHECKPOINTS, EVENTS, SPEC

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
COMPOSE_RUN = ROOT / "deploy" / "compose_run.py"
SOCKET = Path("/var/run/docker.sock")
REPORT_S = 120.0
FOREIGN_IMAGE = "assistant-base:bookworm"  # python3, and nothing of ours
FOREIGN_RECIPE = """
[recipes.hello]
summary = "a script of the user's own, in an image that is not ours"
image = "assistant-base:bookworm"
command = ["python3", "-c", "for i in range(1, 6): print('iter %d: loss %.3f' % (i, 1 / i))"]
gpus = 0

[recipes.hello.progress]
progress = ['iter (?P<step>\\d+): loss (?P<loss>[\\d.]+)']
"""


def has_compose() -> bool:
    return (
        shutil.which("docker") is not None
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    )


@dataclass
class Deployment:
    project: str
    container: str
    env: dict[str, str]

    def exec(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "exec", self.container, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def logs(self) -> str:
        done = subprocess.run(["docker", "logs", self.container], capture_output=True, text=True)
        return done.stdout + done.stderr

    def volume_mountpoint(self) -> Path:
        done = subprocess.run(
            ["docker", "volume", "inspect", f"{self.project}_assistant-data"],
            capture_output=True,
            text=True,
            check=True,
        )
        return Path(json.loads(done.stdout)[0]["Mountpoint"])


def compose(env: dict[str, str], project: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`docker compose -f deploy/compose.yaml -p PROJECT ARGS` or compose_run.py's same."""
    if has_compose():
        argv = ["docker", "compose", "-f", str(COMPOSE_FILE), "-p", project, *args]
    else:
        argv = [sys.executable, str(COMPOSE_RUN), "-f", str(COMPOSE_FILE), "-p", project, *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def deploy(service_image: str, tmp_path: Path) -> Iterator[Callable[[str], Deployment]]:
    """Start the compose service with an env file of `settings`; removed (volume too) after."""
    started: list[Deployment] = []

    def start(settings: str = "") -> Deployment:
        project = f"assistant-test-{secrets.token_hex(3)}"
        env_file = tmp_path / f"{project}.env"
        env_file.write_text(settings)
        env = {
            **os.environ,
            "DOCKER_GID": str(SOCKET.stat().st_gid),
            "ASSISTANT_ENV_FILE": str(env_file),
            "ASSISTANT_SERVICE_IMAGE": service_image,
        }
        deployment = Deployment(project, f"{project}-assistant-1", env)
        started.append(deployment)
        done = (
            compose(env, project, "up", "--detach")
            if has_compose()
            else compose(env, project, "up")
        )
        assert done.returncode == 0, done.stderr
        return deployment

    yield start
    for deployment in started:
        compose(deployment.env, deployment.project, "down", "-v")


def wait_for(read: Callable[[], str], pattern: str, timeout: float) -> str:
    """Everything `read` returned until `pattern` shows up in it."""
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen += read()
        if re.search(pattern, seen):
            return seen
        time.sleep(0.5)
    raise AssertionError(f"{pattern!r} did not show within {timeout:g} s; saw:\n{seen[-3000:]}")


def test_a_classifier_run_sent_through_docker_exec_reports_success(
    deploy: Callable[[str], Deployment],
) -> None:
    service = deploy("")
    up = service.exec("python3", "-m", "assistant.health", "--wait", "60", timeout=90)
    assert up.returncode == 0, up.stdout + up.stderr + service.logs()
    # the service read where its /data lies on the host from its own container, and proved it
    volume = service.volume_mountpoint()
    assert f"ASSISTANT_HOME /data is {volume} on the engine's host" in service.logs()

    sent = service.exec("assistant", "send", "/run train classifier steps=20")
    assert sent.returncode == 0, sent.stderr
    match = re.search(r"^Run (\w+): classifier", sent.stdout, re.M)
    assert match, sent.stdout
    run_id = match.group(1)

    def inbox() -> str:
        return service.exec("assistant", "inbox").stdout

    report = wait_for(inbox, rf"Run {run_id} \(classifier\) (succeeded|failed)", REPORT_S)
    assert f"Run {run_id} (classifier) succeeded" in report, report
    assert f"Checkpoint: /data/runs/{run_id}/{CHECKPOINTS}/ckpt_00000020.pt" in report

    # what the run wrote is where the service reads it: in its own /data ...
    listed = service.exec("ls", f"/data/runs/{run_id}", f"/data/runs/{run_id}/{CHECKPOINTS}")
    assert listed.returncode == 0, listed.stderr
    for name in (SPEC, EVENTS, "ckpt_00000020.pt"):
        assert name in listed.stdout.split()
    # ... which on the host is the volume's folder, never the host's own /data
    assert (volume / "runs" / run_id / CHECKPOINTS / "ckpt_00000020.pt").is_file()
    assert not Path(f"/data/runs/{run_id}").exists()

    # an image that is not ours gets the agent from the service's home (its own copy lies
    # in the container's site-packages, which the engine cannot mount)
    written = subprocess.run(
        ["docker", "exec", "-i", service.container, "sh", "-c", "cat > /data/recipes.toml"],
        input=FOREIGN_RECIPE,
        capture_output=True,
        text=True,
    )
    assert written.returncode == 0, written.stderr
    sent = service.exec("assistant", "send", "/run train hello")
    match = re.search(r"^Run (\w+): hello", sent.stdout, re.M)
    assert match and f"image {FOREIGN_IMAGE}" in sent.stdout, sent.stdout + sent.stderr
    report = wait_for(inbox, rf"Run {match.group(1)} \(hello\) (succeeded|failed)", REPORT_S)
    assert f"Run {match.group(1)} (hello) succeeded" in report, report
    copies = service.exec("ls", "/data/agent").stdout.split()
    assert len(copies) == 1 and (volume / "agent" / copies[0] / "assistant" / "jobs").is_dir()

    # the image builds no images: it says where they are built
    build = service.exec("assistant", "images", "build")
    assert build.returncode == 1
    assert "on the engine's host with deploy/build-images.sh" in build.stdout + build.stderr


def test_a_wrong_host_home_stops_the_service_naming_both_paths(
    deploy: Callable[[str], Deployment],
) -> None:
    wrong = f"/srv/assistant-not-here-{secrets.token_hex(3)}"
    service = deploy(f"ASSISTANT_HOST_HOME={wrong}\n")
    logs = wait_for(service.logs, "Runs would write where the service never reads", 60)
    assert f"ASSISTANT_HOME /data is not {wrong} on the engine's host" in logs
    assert "ASSISTANT_HOST_HOME" in logs.split("is not", 1)[1]
    assert not Path(wrong).exists()  # the check never made the folder it looked for


def test_compose_run_reads_the_compose_file_and_refuses_what_it_does_not_know(
    tmp_path: Path,
) -> None:
    env_file = tmp_path / "assistant.env"
    env_file.write_text("")
    env = {**os.environ, "DOCKER_GID": "4242", "ASSISTANT_ENV_FILE": str(env_file)}
    run = [sys.executable, str(COMPOSE_RUN), "-p", "demo"]
    argv = subprocess.run([*run, "argv"], env=env, capture_output=True, text=True)
    assert argv.returncode == 0, argv.stderr
    line = argv.stdout
    for option in (
        "--name demo-assistant-1",
        "--group-add 4242",
        "--volume demo_assistant-data:/data",
        "--volume /var/run/docker.sock:/var/run/docker.sock",
        "--env ASSISTANT_HOME=/data",
        "--env ASSISTANT_RUNNER=docker",
        f"--env-file {env_file}",
        "--health-cmd 'python3 -m assistant.health --timeout 8'",
        "--security-opt no-new-privileges:true",
        "--stop-timeout 30",
    ):
        assert option in line, (option, line)
    assert line.rstrip().endswith("assistant:latest")

    no_gid = {k: v for k, v in env.items() if k != "DOCKER_GID"}
    refused = subprocess.run([*run, "argv"], env=no_gid, capture_output=True, text=True)
    assert refused.returncode == 1
    assert "DOCKER_GID" in refused.stderr and "stat -c %g /var/run/docker.sock" in refused.stderr

    grown = tmp_path / "compose.yaml"
    grown.write_text(
        COMPOSE_FILE.read_text().replace("    restart:", "    privileged: true\n    restart:")
    )
    unknown = subprocess.run(
        [*run, "-f", str(grown), "argv"], env=env, capture_output=True, text=True
    )
    assert unknown.returncode == 1 and "services.assistant.privileged" in unknown.stderr
