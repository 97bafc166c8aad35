"""One run's bad line costs that line: fuzzing events.jsonl and a declared recipe's output.

The flow test runs a poisoned run beside a well-behaved one through chat: the poison
(a checkpoint whose name is not UTF-8, NUL, random bytes, broken JSON, JSON of the wrong
shape, a line of megabytes) is skipped and told once to its chat, the neighbour is not
affected, and a restart of the service does not bring the failure back.
"""

from __future__ import annotations

import json
import os
import random
import threading
from pathlib import Path
from typing import Any

import pytest

from assistant.config import Settings
from assistant.jobs.declared_run import DeclaredJob, OutputFollower
from assistant.jobs.protocol import EventWriter
from assistant.orchestrator import Orchestrator
from assistant.recipes.loader import check_text
from assistant.runs import rundir
from assistant.runs.bench_report import load_results
from assistant.runs.events import MAX_LINE, parse_line, read_new
from assistant.runs.lifecycle import settle
from assistant.runs.report import log_tail, read_events
from storage.runs import RunRecord
from tests.support.hostile_runs import declare, launch, make_runner
from tests.support.recording import RecordingChannel
from tests.support.run_flow import ADMIN, step_of, wait_until
from tests.support.run_records import record

SHAPES = [
    b"[]",
    b"null",
    b'"text"',
    b"3.5",
    b'{"type":"progress","step":"x"}',
    b'{"type":"metric","name":{},"value":[]}',
    b'{"type":"metric","name":"acc","value":true}',
    b'{"type":"started","total":"abc","step":-4}',
    b'{"type":"progress","step":5,"total":{"a":1},"loss":"low"}',
    b'{"type":"checkpoint","step":1,"path":"out/\\udcff.pt","best":false}',
    b'{"type":"checkpoint","path":["a"]}',
    b'{"type":"log","message":"nul \\u0000 here \\ud800"}',
    b'{"type":"progress","step":4,"\\udcff":1,"\\u0000":2}',
    b'{"type":"result","status":{"x":1},"final":[1],"best":"x"}',
    b'{"type":"error","kind":1,"message":{"a":"b"},"traceback":"not a list"}',
    b'{"type":"nosuch"}',
    b'{"type":' + b'"x' * 10,
    b"{broken json",
    b"\xff\xfe\x00garbage",
    b"[" * 100_000,
    b'{"type":"progress","step":99999999999999999999999999}',
    b'{"type":"progress","step":1,"loss":NaN,"lr":Infinity}',
]


def utf8_clean(value: Any) -> None:
    """Every text in an event can be written to SQLite, a chat, the model: valid UTF-8."""
    if isinstance(value, str):
        value.encode("utf-8")
        assert "\x00" not in value
    elif isinstance(value, dict):
        for key, item in value.items():
            utf8_clean(key)
            utf8_clean(item)
    elif isinstance(value, list):
        for item in value:
            utf8_clean(item)


def random_lines(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        pick = rng.random()
        if pick < 0.3:
            lines.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200))))
        elif pick < 0.6:
            shape = rng.choice(SHAPES)
            cut = rng.randint(0, len(shape))
            lines.append(shape[:cut] + bytes([rng.getrandbits(8)]) + shape[cut:])
        else:
            lines.append(rng.choice(SHAPES))
    return [line.replace(b"\n", b" ") for line in lines]


# ---------------------------------------------------------------------------- units


def test_every_line_shape_gives_a_valid_event_or_a_reason() -> None:
    for line in [*SHAPES, *random_lines(11, 3000)]:
        event = parse_line(line)
        if isinstance(event, str):
            utf8_clean(event)
            continue
        utf8_clean(event)
        assert isinstance(event.get("type"), str)
        step = event.get("step")
        assert step is None or (type(step) is int and 0 <= step < 2**53)
        if event["type"] == "metric":
            assert isinstance(event["name"], str) and type(event["value"]) in (int, float)
        if event["type"] == "checkpoint":
            assert isinstance(event["path"], str) and event["path"]


def test_the_offset_always_moves_past_what_was_read(tmp_path: Path) -> None:
    good = b'{"type":"progress","step":7,"loss":0.5}'
    lines = [*random_lines(5, 400), good]
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    offset, events, skipped = 0, [], []
    for _ in range(10_000):
        batch = read_new(tmp_path, offset, limit=64 * 1024)
        events += batch.events
        skipped += batch.skipped
        if batch.offset == offset:
            break
        offset = batch.offset
    assert offset == (tmp_path / "events.jsonl").stat().st_size
    assert events[-1]["step"] == 7 and skipped
    for event in events:
        utf8_clean(event)


def test_a_line_longer_than_a_whole_read_is_skipped_in_pieces(tmp_path: Path) -> None:
    huge = b'{"type":"log","message":"' + b"A" * (3 * MAX_LINE) + b'"}'
    good = b'{"type":"progress","step":3}'
    (tmp_path / "events.jsonl").write_bytes(huge + b"\n" + good + b"\n")
    offset, events, skipped = 0, [], []
    while offset < (tmp_path / "events.jsonl").stat().st_size:
        batch = read_new(tmp_path, offset, limit=MAX_LINE)
        assert batch.offset > offset  # never held in place
        offset, events, skipped = batch.offset, events + batch.events, skipped + batch.skipped
    assert [e["step"] for e in events] == [3] and skipped


def test_events_that_are_a_link_or_a_fifo_are_not_read(tmp_path: Path) -> None:
    outside = tmp_path / "outside.jsonl"
    outside.write_text('{"type":"progress","step":99}\n')
    run = tmp_path / "run"
    run.mkdir()
    (run / "events.jsonl").symlink_to(outside)
    batch = read_new(run, 0)
    assert batch.events == [] and batch.problem and "not a regular file" in batch.problem
    assert read_events(run) == []
    (run / "events.jsonl").unlink()
    os.mkfifo(run / "events.jsonl")
    batch = read_new(run, 0)  # returns: a FIFO is never waited on
    assert batch.events == [] and batch.problem
    assert read_events(run) == []


def in_thread(fn: Any, *args: Any) -> Any:
    """Call `fn` in a thread; a call that never returns (an open FIFO) fails the test."""
    out: list[Any] = []
    worker = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    worker.start()
    worker.join(30)
    assert out, f"{fn.__name__} never returned"
    return out[0]


def test_result_logs_and_bench_files_that_are_fifos_or_links_are_not_read(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "secret"
    secret.write_text('{"status": "succeeded", "output_throughput": 1}\nsecret line\n')
    secret.chmod(0o600)
    run = tmp_path / "run"
    (run / "artifacts" / "bench").mkdir(parents=True)
    os.mkfifo(run / "result.json")
    os.mkfifo(run / "stdout.log")
    os.mkfifo(run / "artifacts" / "bench" / "fifo.json")
    (run / "agent.log").symlink_to(secret)
    (run / "artifacts" / "bench" / "linked.json").symlink_to(secret)
    state, _ = in_thread(settle, record(), run, None, None, None)
    assert state == "lost"  # no result.json it could read
    tail = in_thread(log_tail, run)
    assert tail and "not a regular file" in tail[0] and "secret" not in "".join(tail)
    assert in_thread(load_results, run) == {}
    (run / "artifacts").rename(run / "real-artifacts")
    (run / "artifacts").symlink_to(secret.parent)
    assert in_thread(load_results, run) == {}


def test_result_json_with_poison_settles_with_valid_text(tmp_path: Path) -> None:
    (tmp_path / "result.json").write_bytes(
        b'{"status":"failed","error":{"kind":"exception","message":"bad \\udcff\\u0000",'
        b'"traceback":"not a list"}}'
    )
    state, cause = settle(record(), tmp_path, None, None, None)
    assert state == "failed" and cause is not None
    utf8_clean(cause)
    (tmp_path / "result.json").write_bytes(b"[" * 100_000)
    assert settle(record(), tmp_path, None, None, None)[0] == "lost"


def test_host_writes_replace_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("host file")
    run = tmp_path / "run"
    (run / "artifacts").mkdir(parents=True)
    (run / "control.json").symlink_to(victim)
    rundir.write_file(run, "control.json", b'{"action": "stop"}')
    assert victim.read_text() == "host file"
    assert (run / "control.json").read_text() == '{"action": "stop"}'
    (run / "linked").symlink_to(tmp_path)
    with pytest.raises(rundir.UnsafeEntry):
        rundir.write_file(run, "linked/victim", b"x")
    with pytest.raises(rundir.UnsafeEntry):
        rundir.write_file(run, "../victim", b"x")
    assert victim.read_text() == "host file"
    assert rundir.checkpoint_problem(run, "linked/victim") is not None
    assert rundir.checkpoint_problem(run, "control.json") is None


def declared_job(tmp_path: Path) -> DeclaredJob:
    toml = b"""
[recipes.fuzz]
command = ["python3", "x.py"]
gpus = 0
[recipes.fuzz.progress]
json_prefix = "@a "
progress = ['iter (?P<step>\\d+): loss (?P<loss>[\\d.]+)']
metrics = ['val (?P<val_loss>[\\d.eE+-]+)']
"""
    result = check_text(
        toml, file="recipes.toml", allowed_roots=(), secrets_dir=tmp_path / "secrets"
    )
    assert result.ok, result.problems
    return DeclaredJob(
        recipe=result.recipes["fuzz"],
        params={},
        argv=["python3", "x.py"],
        cwd=tmp_path,
        env={},
        secrets=(),
        checkpoint_root=tmp_path,
        total=None,
        resumed_from=None,
    )


def test_a_declared_recipes_output_fuzzed_gives_only_valid_events(tmp_path: Path) -> None:
    job = declared_job(tmp_path)
    rng = random.Random(3)
    lines = []
    for line in random_lines(7, 1500):
        pick = rng.random()
        if pick < 0.4:
            lines.append(b"@a " + line)
        elif pick < 0.5:
            lines.append(b"iter " + line[:20] + b": loss " + line[20:40])
        else:
            lines.append(line)
    lines += [b"@a " + b'{"type":"log","message":"' + b"B" * (2 << 20) + b'"}', b"\r\x00\r"]
    lines += [b"iter 5: loss 0.25", b"val 1e400", b'@a {"type":"checkpoint","path":"/etc/passwd"}']
    (tmp_path / "stdout.log").write_bytes(b"\n".join(lines) + b"\n")
    writer = EventWriter(tmp_path)
    follower = OutputFollower(job, writer, tmp_path / "stdout.log", 0)
    follower.poll(final=True)
    writer.close()
    written = (tmp_path / "events.jsonl").read_bytes().splitlines()
    assert written
    kinds = []
    for line in written:
        event = parse_line(line)
        if isinstance(event, dict):
            utf8_clean(event)
            kinds.append(event["type"])
            if event["type"] == "checkpoint":
                assert event["path"] != "/etc/passwd"
    assert "progress" in kinds and follower.step is not None


# ----------------------------------------------------------------------------- flow

POISON = r"""
import json, os, random, sys, time
run = sys.argv[1]
for i in range(1, 3):
    print(f"iter {i}: loss {1.0 / i:.4f}", flush=True)
    time.sleep(0.2)
rng = random.Random(1)
lines = [
    b'{"type": "checkpoint", "step": 2, "path": "out/\\udcff\\udcfe.pt", "best": false}',
    b'{"type": "log", "level": "info", "message": "nul \\u0000 and \\ud800"}',
    b"\xff\xfe not utf-8 \x00 at all",
    b"[]",
    b'{"type": "progress", "step": "x"}',
    b'{"type": "metric", "name": {}, "value": []}',
    b"{broken json",
    b'{"type": "log", "message": "' + b"A" * (5 * 1024 * 1024) + b'"}',
    b"[" * 100000,
    bytes(rng.getrandbits(8) for _ in range(300)).replace(b"\n", b" "),
]
fd = os.open(os.path.join(run, "events.jsonl"), os.O_WRONLY | os.O_APPEND)
for line in lines:
    os.write(fd, line + b"\n")
os.close(fd)
os.makedirs(os.path.join(run, "out"), exist_ok=True)
with open(os.path.join(os.fsencode(run), b"out", b"ckpt-\xff.json"), "wb") as fh:
    fh.write(b"x")  # a checkpoint whose file name is not UTF-8
for i in range(3, 21):
    print(f"iter {i}: loss {1.0 / i:.4f}", flush=True)
    time.sleep(0.4)
"""


async def test_a_poisoned_run_leaves_its_neighbour_and_a_restart_alone(
    settings: Settings,
    tmp_path: Path,
    kind: str,
) -> None:
    configured = declare(settings, tmp_path, kind, POISON)
    channel = RecordingChannel()
    async with Orchestrator(configured, channels=[channel], runner=make_runner(configured)) as orch:
        repo = orch.services.runs.repo
        poisoned = await launch(channel, "/run train hostile")
        await wait_until(lambda: step_of(repo, poisoned), 4)  # past the poison
        neighbour = await launch(channel, "/run train plain")
        report = await channel.wait_for(f"Run {neighbour} (plain) succeeded", timeout=120)
        assert "step 15/15" in report, report
        (show,) = await channel.say(ADMIN, f"/run show {poisoned}")
        assert "running" in show
        await wait_until(lambda: step_of(repo, poisoned), 8)
        status = "\n".join(await channel.say(ADMIN, "/status"))
        assert "Run monitor: " in status and " event line(s) skipped" in status, status
        await orch.services.log.flush()
    told = [t for _, t in channel.sent if f"Run {poisoned}" in t and "was skipped" in t]
    assert len(told) == 1, told
    # the service restarts while the poisoned run goes on
    again = RecordingChannel()
    async with Orchestrator(configured, channels=[again], runner=make_runner(configured)) as orch:
        report = await again.wait_for(f"Run {poisoned} (hostile) succeeded", timeout=120)
        run: RunRecord | None = await orch.services.runs.repo.get(poisoned)
        await orch.services.log.flush()
        skipped = await orch.services.db.scalar(
            "SELECT count(*) FROM event_log WHERE source_id = ? AND summary LIKE ?",
            (poisoned, "%skipped%"),
        )
    assert "step 20/20" in report, report
    assert not [t for _, t in again.sent if "was skipped" in t]  # not again after a restart
    assert run is not None and run.events_offset > 5 * 1024 * 1024
    assert skipped and skipped >= 1
    for _, text in [*channel.sent, *again.sent]:
        utf8_clean(text)
    assert json.dumps(run.metrics)  # stored numbers read back


CHECKPOINTING = r"""
import os, sys, time
run = sys.argv[1]
os.makedirs(os.path.join(run, "out"), exist_ok=True)
for i in range(1, 16):
    print(f"iter {i}: loss {1.0 / i:.4f}", flush=True)
    if i % 3 == 0:
        with open(os.path.join(run, "out", f"ckpt-{i:06d}.json"), "w") as fh:
            fh.write("{}")
    time.sleep(0.3)
"""


async def test_a_run_whose_lines_make_its_pass_fail_is_skipped_past_alone(
    settings: Settings, tmp_path: Path
) -> None:
    """A bad day in production: one run's stored recipe snapshot is corrupt, so each pass
    over its checkpoint lines raises. That run's lines are skipped after a few tries and
    its chat is told; the run beside it is followed as if nothing happened."""
    configured = declare(settings, tmp_path, "process", CHECKPOINTING)
    channel = RecordingChannel()
    async with Orchestrator(configured, channels=[channel], runner=make_runner(configured)) as orch:
        repo = orch.services.runs.repo
        broken = await launch(channel, "/run train hostile")
        await orch.services.db.write(
            "UPDATE runs SET definition = ? WHERE id = ?", ('{"name": 5}', broken)
        )
        neighbour = await launch(channel, "/run train plain")
        report = await channel.wait_for(f"Run {neighbour} (plain) succeeded", timeout=120)
        assert "step 15/15" in report, report
        told = await channel.wait_for(f"Run {broken} (hostile): a line of", timeout=120)
        assert "made following it fail" in told and "ValueError" in told, told
        await channel.wait_for(f"Run {broken} (hostile) succeeded", timeout=120)
        assert (await step_of(repo, broken)) >= 1
        assert orch.services.monitor.pass_failures >= 3
        report = "\n".join(await channel.say(ADMIN, "/debug report"))
        assert "Run monitor: " in report and " failed pass(es) since start" in report, report
