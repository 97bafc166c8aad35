"""A hostile run cannot read or write host files through its run dir, nor stall monitoring.

Each test declares a recipe whose script attacks the host the way a run's code could: it
swaps its log for a link to a 0600 file outside, plants links where the host writes its
own files (control.json, the report's plot, spec.json), leaves FIFOs where the host reads,
names checkpoints that are links or lie outside, and appends poison to events.jsonl. The
service is driven through chat, with the process runner and with a real Docker engine.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from assistant.runs.docker_runner import DEFAULT_RUN_UID, DockerRunner
from assistant.runs.select import login_account
from tests.support.docker_runs import make_request, wait_ended
from tests.support.hostile_runs import declare, launch, make_runner
from tests.support.recording import RecordingChannel
from tests.support.run_flow import ADMIN, step_of, wait_until

HOST_SECRET = "root-only-host-file-7f3a9c0e"


def host_file(tmp_path: Path, name: str, content: bytes = HOST_SECRET.encode()) -> Path:
    """A 0600 file outside every run dir, as root's files on the host are."""
    folder = tmp_path / "host-only"
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / name
    path.write_bytes(content)
    path.chmod(0o600)
    return path


def unchanged(path: Path, content: bytes) -> None:
    """The host file still holds what it held, and nobody else may read it."""
    assert not path.is_symlink()
    assert path.read_bytes() == content, path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# ------------------------------------------------------------------------ reading links


async def test_a_log_swapped_for_a_link_is_not_quoted_in_the_failure_report(
    settings: Settings, tmp_path: Path, kind: str
) -> None:
    secret = host_file(tmp_path, "shadow")
    script = f"""
import os, sys, time
run = sys.argv[1]
for i in range(1, 4):
    print(f"iter {{i}}: loss {{1.0 / i:.4f}}", flush=True)
    time.sleep(0.2)
for name in ("stdout.log", "agent.log"):
    try:
        os.unlink(os.path.join(run, name))
    except OSError:
        pass
    os.symlink({str(secret)!r}, os.path.join(run, name))
sys.exit(3)
"""
    configured = declare(settings, tmp_path, kind, script)
    channel = RecordingChannel()
    async with Orchestrator(configured, channels=[channel], runner=make_runner(configured)):
        run_id = await launch(channel, "/run train hostile")
        report = await channel.wait_for(f"Run {run_id} (hostile) failed", timeout=120)
        (logs,) = await channel.say(ADMIN, f"/run logs {run_id}")
    assert "exit" in report and "code 3" in report, report
    for text in (report, logs, *(t for _, t in channel.sent)):
        assert HOST_SECRET not in text
    assert "stdout.log not read" in report, report
    unchanged(secret, HOST_SECRET.encode())


# ------------------------------------------------------------------------ writing links


async def test_links_where_the_host_writes_are_replaced_never_written_through(
    settings: Settings, tmp_path: Path, kind: str
) -> None:
    """control.json (stop, pause), the report's plot and spec.json (resume)."""
    control = host_file(tmp_path, "control-target", b"host control target\n")
    png = host_file(tmp_path, "png-target", b"host png target\n")
    spec = host_file(tmp_path, "spec-target", b"host spec target\n")
    script = f"""
import json, os, sys, time
run = sys.argv[1]
tried = {{}}

def plant(name, target):
    path = os.path.join(run, name)
    try:
        if os.path.lexists(path):
            os.unlink(path)
        os.symlink(target, path)
        tried[name] = "planted"
    except OSError as exc:
        tried[name] = exc.strerror

plant("control.json", {str(control)!r})
plant("spec.json", {str(spec)!r})
os.makedirs(os.path.join(run, "artifacts"), exist_ok=True)
plant("artifacts/curves.png", {str(png)!r})
os.makedirs(os.path.join(run, "out"), exist_ok=True)
with open(os.path.join(run, "out", "tried.json"), "w") as fh:
    json.dump(tried, fh)
start = 1
if any(a.startswith("--resume=") for a in sys.argv):
    start = 6
for i in range(start, 1000):
    print(f"iter {{i}}: loss {{1.0 / i:.4f}}", flush=True)
    if i == 2:
        with open(os.path.join(run, "out", "ckpt-000002.json"), "w") as fh:
            fh.write("{{}}")
    time.sleep(0.1)
"""
    configured = declare(settings, tmp_path, kind, script)
    channel = RecordingChannel()
    async with Orchestrator(configured, channels=[channel], runner=make_runner(configured)) as orch:
        repo = orch.services.runs.repo
        run_dir = orch.services.runs.run_dir
        run_id = await launch(channel, "/run train hostile")
        await wait_until(lambda: step_of(repo, run_id), 4)
        await channel.say(ADMIN, f"/run pause {run_id}")
        await channel.wait_for(f"Run {run_id} (hostile) paused", timeout=90)
        tried = json.loads((run_dir(run_id) / "out" / "tried.json").read_text())
        if kind == "docker" and os.geteuid() == 0:
            # the host's own files are not the run uid's to replace
            assert tried["spec.json"] in ("Permission denied", "Operation not permitted"), tried
        assert (run_dir(run_id) / "control.json").is_file()
        assert not (run_dir(run_id) / "control.json").is_symlink()
        assert json.loads((run_dir(run_id) / "control.json").read_text()) == {"action": "pause"}
        await channel.say(ADMIN, f"/run resume {run_id}")
        spec_now = json.loads((run_dir(run_id) / "spec.json").read_text())
        assert spec_now["resume_from"] == "out/ckpt-000002.json"
        await wait_until(lambda: step_of(repo, run_id), 8)
        await channel.say(ADMIN, f"/run stop {run_id}")
        await channel.wait_for(f"Run {run_id} (hostile) cancelled", timeout=90)
        curves = run_dir(run_id) / "artifacts" / "curves.png"
        assert not curves.is_symlink() and curves.read_bytes()[:4] == b"\x89PNG"
        # what a chat is sent is a copy the run cannot reach
        assert channel.images and all(p.parent.name == ".outbox" for _, p in channel.images)
    unchanged(control, b"host control target\n")
    unchanged(png, b"host png target\n")
    unchanged(spec, b"host spec target\n")


async def test_a_folder_where_control_goes_does_not_block_a_stop(
    settings: Settings, tmp_path: Path, kind: str
) -> None:
    script = """
import os, sys, time
run = sys.argv[1]
os.makedirs(os.path.join(run, "control.json", "deeper"))
for i in range(1, 1000):
    print(f"iter {i}: loss {1.0 / i:.4f}", flush=True)
    time.sleep(0.1)
"""
    configured = declare(settings, tmp_path, kind, script)
    channel = RecordingChannel()
    async with Orchestrator(configured, channels=[channel], runner=make_runner(configured)) as orch:
        run_id = await launch(channel, "/run train hostile")
        await wait_until(lambda: step_of(orch.services.runs.repo, run_id), 3)
        (reply,) = await channel.say(ADMIN, f"/run stop {run_id}")
        assert "stopping" in reply, reply
        await channel.wait_for(f"Run {run_id} (hostile) cancelled", timeout=90)


# ------------------------------------------------------------------------------ FIFOs


async def test_fifos_where_the_host_reads_do_not_hang_the_service(
    settings: Settings, tmp_path: Path, kind: str
) -> None:
    script = """
import os, sys, time
run = sys.argv[1]
for i in range(1, 4):
    print(f"iter {i}: loss {1.0 / i:.4f}", flush=True)
    time.sleep(0.2)
time.sleep(0.5)
for name in ("stdout.log", "events.jsonl", "agent.log"):
    path = os.path.join(run, name)
    try:
        os.unlink(path)
    except OSError:
        pass
    os.mkfifo(path)
sys.exit(3)
"""
    configured = declare(settings, tmp_path, kind, script)
    channel = RecordingChannel()
    async with Orchestrator(configured, channels=[channel], runner=make_runner(configured)):
        run_id = await launch(channel, "/run train hostile")
        report = await channel.wait_for(f"Run {run_id} (hostile) failed", timeout=120)
        (logs,) = await channel.say(ADMIN, f"/run logs {run_id}")
        (status,) = await channel.say(ADMIN, "/status")  # the service still answers
    assert "stdout.log not read" in report and "not a regular file" in report, report
    assert "not a regular file" in logs
    assert status


# ------------------------------------------------------------------------- checkpoints


async def test_checkpoints_that_are_links_or_lie_outside_are_ignored(
    settings: Settings, tmp_path: Path, kind: str
) -> None:
    secret = host_file(tmp_path, "model.pt")
    outside_dir = secret.parent
    script = f"""
import json, os, sys, time
run = sys.argv[1]
out = os.path.join(run, "out")
os.makedirs(out, exist_ok=True)
for i in range(1, 3):
    print(f"iter {{i}}: loss {{1.0 / i:.4f}}", flush=True)
    time.sleep(0.2)
with open(os.path.join(out, "ckpt-000002.json"), "w") as fh:
    fh.write("{{}}")
time.sleep(1.5)  # announced once it stops changing
os.symlink({str(secret)!r}, os.path.join(out, "ckpt-000009.json"))
os.symlink({str(outside_dir)!r}, os.path.join(run, "elsewhere"))
lines = [
    {{"type": "checkpoint", "step": 9, "path": "out/ckpt-000009.json", "best": False}},
    {{"type": "checkpoint", "step": 9, "path": "elsewhere/model.pt", "best": False}},
    {{"type": "checkpoint", "step": 9, "path": {str(secret)!r}, "best": False}},
    {{"type": "checkpoint", "step": 9, "path": "../../../etc/passwd", "best": False}},
    {{"type": "checkpoint", "step": 9, "path": "out/nosuch.pt", "best": False}},
]
fd = os.open(os.path.join(run, "events.jsonl"), os.O_WRONLY | os.O_APPEND)
for line in lines:
    os.write(fd, (json.dumps(line) + "\\n").encode())
os.write(fd, b'{{"type": "checkpoint", "step": 9, "path": "out/\\\\udcff\\\\u0000.pt"}}\\n')
for i in range(3, 6):
    print(f"iter {{i}}: loss {{1.0 / i:.4f}}", flush=True)
    time.sleep(1.0)
"""
    configured = declare(settings, tmp_path, kind, script)
    channel = RecordingChannel()
    async with Orchestrator(configured, channels=[channel], runner=make_runner(configured)) as orch:
        run_id = await launch(channel, "/run train hostile")
        report = await channel.wait_for(f"Run {run_id} (hostile) succeeded", timeout=120)
        run = await orch.services.runs.repo.get(run_id)
    assert run is not None and run.checkpoint == "out/ckpt-000002.json", run
    assert "Skipped event lines: 6" in report and "ignored" in report, report
    notices = [t for _, t in channel.sent if "was skipped" in t]
    assert len(notices) == 1 and "ckpt-000009.json" in notices[0], notices
    unchanged(secret, HOST_SECRET.encode())


# ------------------------------------------------------------------- the run uid (Docker)


async def test_the_run_uid_cannot_touch_spec_or_control_in_a_container(
    runner: DockerRunner,
    probe_image: str,
    tmp_path: Path,
) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs the service's view as root (the tests run as root)")
    request = make_request(tmp_path, probe_image, {"action": "tamper"})
    run_dir = request.run_dir
    (run_dir / "control.json").write_text('{"action": null}')
    (run_dir / "checkpoints").mkdir()
    handle = await runner.launch(request)
    state = await wait_ended(runner, handle)
    assert state.exit is not None and state.exit.exit_code == 0, state
    report = json.loads((run_dir / "out.json").read_text())
    assert report["uid"] == DEFAULT_RUN_UID
    for name in ("spec.json", "control.json"):
        for what in ("write", "chmod", "rename", "replace with a link", "unlink"):
            assert report[f"{name} {what}"] in ("Permission denied", "Operation not permitted"), (
                name,
                what,
                report,
            )
    assert json.loads((run_dir / "spec.json").read_text()) == {"action": "tamper"}
    assert (run_dir / "control.json").read_text() == '{"action": null}'
    for name in ("spec.json", "control.json"):
        info = (run_dir / name).lstat()
        assert stat.S_ISREG(info.st_mode) and info.st_uid == 0
    # what the run must write, it can
    assert (run_dir / "out" / "own.txt").read_text() == "mine"
    assert (run_dir / "checkpoints" / "c.pt").read_text() == "mine"
    info = run_dir.stat()
    assert info.st_uid == 0 and stat.S_IMODE(info.st_mode) == 0o1770
    await runner.remove(handle)


def test_a_run_uid_that_is_a_login_account_is_warned_about(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text(
        "root:x:0:0:root:/root:/bin/bash\n"
        "alice:x:1000:1000:Alice:/home/alice:/bin/bash\n"
        "svc:x:64000:64000::/nonexistent:/usr/sbin/nologin\n"
        "blank:x:1001:1001::/home/blank:\n"
    )
    warning = login_account(1000, passwd)
    assert warning is not None and "'alice'" in warning and "ASSISTANT_RUN_UID" in warning
    assert login_account(1001, passwd) is not None  # an empty shell is /bin/sh
    assert login_account(64000, passwd) is None  # nologin
    assert login_account(64001, passwd) is None  # no account at all
    assert Settings(_env_file=None).run_uid == DEFAULT_RUN_UID  # type: ignore[call-arg]
    assert login_account(DEFAULT_RUN_UID) is None  # not a login account on this host
