"""A real Docker engine for the runner tests, and a tiny probe image built on it.

No engine is a failure, not a skip: a suite that silently skips its container tests
would pass on a machine where runs cannot start. Set ASSISTANT_TEST_NO_DOCKER=1 to skip
them on purpose.
"""

from __future__ import annotations

import asyncio
import io
import os
import secrets
import tarfile
from collections.abc import AsyncIterator, Iterator

import docker
import pytest

from assistant.config import Settings
from assistant.errors import EngineUnavailable, RunStartError
from assistant.runs.docker_runner import DEFAULT_DOCKER_HOST, INSTANCE_LABEL, DockerRunner

TEST_LABEL = "assistant.test"
PROBE_IMAGE = "assistant-test-probe:latest"
# Any image with python3 will do: the imported Debian base is small and quick to build on.
PROBE_BASES = ("assistant-base:bookworm", "assistant-run:latest")
# The probe: does what spec.json in its run dir asks, the way the real agent would be
# driven by the host; every action leaves evidence in the run dir.
PROBE = r"""
import json, os, signal, sys, time
from pathlib import Path

run = Path(sys.argv[1])
spec = json.loads((run / "spec.json").read_text())
action = spec["action"]

if action == "write":
    report = {"uid": os.getuid(), "gid": os.getgid(), "net": sorted(os.listdir("/sys/class/net"))}
    for target in ("/opt/probe-write", "/workspace/probe-write", "/tmp/probe-write"):
        try:
            Path(target).write_text("x")
            report[target] = "written"
        except OSError as exc:
            report[target] = exc.strerror
    (run / "out.json").write_text(json.dumps(report))
elif action == "exit":
    sys.exit(spec["code"])
elif action == "oom":
    blocks = []
    for _ in range(30):
        blocks.append(b"\x01" * (10 << 20))  # filled, so the pages are really used
    (run / "survived").write_text(str(len(blocks)))
elif action == "trap":
    def on_term(signum, frame):
        (run / "terminated").write_text(str(signum))
        sys.exit(4)
    signal.signal(signal.SIGTERM, on_term)
    (run / "ready").write_text("1")
    time.sleep(60)
elif action == "sleep":
    time.sleep(60)
elif action == "tamper":
    # what a hostile run would try on the host's own files in its run dir
    report = {"uid": os.getuid()}
    os.symlink("/etc/hostname", run / "planted")
    for name in ("spec.json", "control.json"):
        path = run / name
        attempts = {
            "write": lambda: path.open("a").write("x"),
            "chmod": lambda: os.chmod(path, 0o666),
            "rename": lambda: os.rename(path, run / "moved"),
            "replace with a link": lambda: os.replace(run / "planted", path),
            "unlink": lambda: os.unlink(path),
        }
        for what, attempt in attempts.items():
            try:
                attempt()
                report[f"{name} {what}"] = "done"
            except OSError as exc:
                report[f"{name} {what}"] = exc.strerror
    (run / "out").mkdir()
    (run / "out" / "own.txt").write_text("mine")
    (run / "checkpoints" / "c.pt").write_text("mine")
    (run / "out.json").write_text(json.dumps(report))
"""
# This test process's instance on the engine: services of other test processes on the same
# engine (another checkout's suite) reconcile "default" containers away, never these.
TEST_INSTANCE = f"tests-{secrets.token_hex(4)}"


def _docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def docker_run_settings(
    settings: Settings, image: str = "assistant-run:latest", **extra: object
) -> Settings:
    """`settings` for runs in real containers: the Docker runner, no GPUs, a quick monitor
    and a stall limit no test reaches, the run image, 1 GB per run; `extra` on top."""
    return settings.model_copy(
        update={
            "runner": "docker",
            "gpus": "none",
            "monitor_interval_s": 0.1,
            "stall_timeout_s": 60.0,
            "run_image": image,
            "run_memory_mb": 1024,
            **extra,
        }
    )


def docker_runner(image: str = "assistant-run:latest") -> DockerRunner:
    """A runner on the test engine, in this test process's instance."""
    return DockerRunner(_docker_host(), image=image, instance=TEST_INSTANCE)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[docker.DockerClient]:
    """The engine the tests use; every container labelled as a test's is removed at the end."""
    if os.environ.get("ASSISTANT_TEST_NO_DOCKER") == "1":
        pytest.skip("ASSISTANT_TEST_NO_DOCKER=1: Docker engine tests skipped on purpose")
    # Asked through the runner first: its error names the address and the fix, and a
    # failed first connect through docker-py alone leaks a socket.
    probe = DockerRunner(_docker_host())
    try:
        asyncio.run(probe.connect())
    except (RunStartError, EngineUnavailable) as exc:
        pytest.fail(f"{exc} (or set ASSISTANT_TEST_NO_DOCKER=1 to skip these tests)", pytrace=False)
    asyncio.run(probe.aclose())
    client = docker.from_env(use_context=False)
    yield client
    for label in (TEST_LABEL, f"{INSTANCE_LABEL}={TEST_INSTANCE}"):
        for container in client.containers.list(all=True, filters={"label": label}):
            container.remove(force=True)
    client.close()


@pytest.fixture(scope="session")
def probe_image(docker_engine: docker.DockerClient) -> str:
    """Build (or reuse from the build cache) the probe image FROM the local base."""
    base = next((b for b in PROBE_BASES if docker_engine.images.list(name=b)), None)
    if base is None:
        pytest.fail(
            f"none of {', '.join(PROBE_BASES)} is on the engine; build them with "
            "deploy/build-images.sh",
            pytrace=False,
        )
    dockerfile = (
        f"FROM {base}\n"
        "COPY probe.py /opt/probe.py\n"
        'CMD ["python3", "/opt/probe.py", "/workspace/run"]\n'
    )
    return build_test_image(docker_engine, PROBE_IMAGE, dockerfile, {"probe.py": PROBE.encode()})


def build_test_image(
    engine: docker.DockerClient, tag: str, dockerfile: str, files: dict[str, bytes]
) -> str:
    """An image from a Dockerfile and files in memory, offline, labelled as a test's."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in (("Dockerfile", dockerfile.encode()), *files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    engine.images.build(
        fileobj=context,
        custom_context=True,
        tag=tag,
        rm=True,
        network_mode="none",
        labels={TEST_LABEL: "1"},
    )
    return tag


@pytest.fixture
async def runner(
    docker_engine: docker.DockerClient, probe_image: str
) -> AsyncIterator[DockerRunner]:
    r = DockerRunner(_docker_host(), image=probe_image)
    await r.connect()
    yield r
    await r.aclose()
