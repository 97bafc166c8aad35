"""A failed run names the exception its output shows, not only its exit code.

A declared recipe (or any plain script) knows nothing of our `error` event: it prints a
Python traceback and exits 1. The report's cause must come from that traceback.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from assistant.config import Settings
from assistant.jobs import protocol
from assistant.jobs.agent import classify_failure, read_tail
from assistant.orchestrator import Orchestrator
from assistant.runs.lifecycle import settle
from assistant.runs.process_runner import ProcessRunner
from assistant.runs.runner import ExitInfo
from tests.support.recording import RecordingChannel
from tests.support.run_flow import ADMIN, RUN_ID
from tests.support.run_records import record

SCRIPT = r"""
import sys

def train(steps, pad):
    for it in range(1, steps + 1):
        print(f"iter {it}: loss 1.0", flush=True)
        if it == 3:
            raise RuntimeError("loss is NaN" + " x" * pad)

train(int(sys.argv[1]), int(sys.argv[2]))
"""

TOML = """
[recipes.nanfail]
summary = "a script that raises once its loss goes bad"
workdir = "{workdir}"
command = ["python3", "train.py", "{{steps}}", "{{pad}}"]
gpus = 0

[recipes.nanfail.params]
steps = {{ type = "int", default = 10, min = 1, max = 100 }}
pad = {{ type = "int", default = 0, min = 0, max = 100000 }}

[recipes.nanfail.progress]
progress = ['iter (?P<step>\\d+): loss (?P<loss>[\\d.]+)']
total = "steps"
"""


@pytest.fixture
async def service(
    settings: Settings, tmp_path: Path
) -> AsyncIterator[tuple[Orchestrator, RecordingChannel]]:
    root = tmp_path / "code"
    workdir = root / "nanfail"
    workdir.mkdir(parents=True)
    (workdir / "train.py").write_text(SCRIPT)
    settings.assistant_home.mkdir(parents=True, exist_ok=True)
    (settings.assistant_home / "recipes.toml").write_text(TOML.format(workdir=workdir))
    declared = settings.model_copy(
        update={"recipe_roots": (root,), "monitor_interval_s": 0.1, "stall_timeout_s": 60.0}
    )
    channel = RecordingChannel()
    runner = ProcessRunner(declared.runs_dir)
    async with Orchestrator(declared, channels=[channel], runner=runner) as orch:
        yield orch, channel


@pytest.mark.parametrize("pad", [0, 20_000])  # 20,000: a message too long for an event line
async def test_a_declared_recipe_that_raises_names_the_exception(
    service: tuple[Orchestrator, RecordingChannel], pad: int
) -> None:
    orch, channel = service
    (reply,) = await channel.say(ADMIN, f"/run train nanfail pad={pad}")
    match = RUN_ID.search(reply)
    assert match is not None, reply
    run_id = match.group(1)
    report = await channel.wait_for(f"Run {run_id} (nanfail) failed", timeout=60)
    assert "Cause: RuntimeError: loss is NaN" in report, report
    assert "exit code" not in report.split("Cause:")[1].splitlines()[0]
    cause = report.split("Cause:")[1].split("Last log lines:")[0]
    assert 'raise RuntimeError("loss is NaN" + " x" * pad)' in cause, report  # its traceback
    run = await orch.services.runs.repo.get(run_id)
    assert run is not None and run.state == "failed"
    assert run.error is not None and run.error.startswith("RuntimeError: loss is NaN")


# The parser the agent uses on a recipe's output tail.

CHAINED = """\
iter 3: loss nan
Traceback (most recent call last):
  File "train.py", line 9, in step
    check(loss)
ValueError: bad loss

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "train.py", line 12, in <module>
    step()
  File "train.py", line 11, in step
    raise RuntimeError("loss is NaN")
RuntimeError: loss is NaN
"""

CAUSED = """\
Traceback (most recent call last):
  File "a.py", line 2, in <module>
    open("/nope")
FileNotFoundError: [Errno 2] No such file or directory: '/nope'

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "a.py", line 4, in <module>
    raise SystemError("data missing")
SystemError: data missing
"""


def test_chained_exceptions_name_the_last_one() -> None:
    for text, want in (
        (CHAINED, "RuntimeError: loss is NaN"),
        (CAUSED, "SystemError: data missing"),
    ):
        error = classify_failure(1, text)
        assert error["kind"] == "exception"
        assert error["message"] == want
        assert error["traceback"][0] == "Traceback (most recent call last):"
        assert error["traceback"][-1] == want


def test_lines_after_the_traceback_do_not_hide_it() -> None:
    text = (
        "Traceback (most recent call last):\n"
        '  File "train.py", line 3, in <module>\n'
        "    1 / 0\n"
        "ZeroDivisionError: division by zero\n"
        "wandb: Waiting for W&B process to finish... (failed 1).\n"
        "wandb: You can sync this run to the cloud with:\n"
        "[rank0]: cleanup done\n"
    )
    error = classify_failure(1, text)
    assert error["kind"] == "exception"
    assert error["message"] == "ZeroDivisionError: division by zero"
    assert error["traceback"][-1] == "ZeroDivisionError: division by zero"


def test_a_multi_line_message_keeps_its_first_line() -> None:
    text = (
        "Traceback (most recent call last):\n"
        '  File "train.py", line 3, in <module>\n'
        "    check()\n"
        "AssertionError: shapes differ\n"
        "expected (4, 8)\n"
        "got (4, 9)\n"
    )
    assert classify_failure(1, text)["message"] == "AssertionError: shapes differ"


def test_a_dotted_exception_and_one_without_a_message() -> None:
    text = (
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\n'
        "torch.distributed.DistBackendError: NCCL error in: init\n"
    )
    assert (
        classify_failure(1, text)["message"]
        == "torch.distributed.DistBackendError: NCCL error in: init"
    )
    bare = 'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\nKeyboardInterrupt\n'
    assert classify_failure(1, bare)["message"] == "KeyboardInterrupt"


def test_no_traceback_falls_back_to_the_exit_code() -> None:
    error = classify_failure(3, "iter 1: loss 2.0\nsomething went wrong, giving up\n")
    assert error == {
        "kind": "exit",
        "message": "exited with code 3",
        "traceback": ["iter 1: loss 2.0", "something went wrong, giving up"],
    }
    assert classify_failure(1, "")["message"] == "exited with code 1"


def test_a_non_python_error_is_not_taken_for_an_exception() -> None:
    text = "terminate called after throwing an instance of 'std::runtime_error'\n  what():  bad\n"
    error = classify_failure(134, text)
    assert error["kind"] == "exit" and error["message"] == "exited with code 134"
    # a "Traceback" word in an ordinary line is no traceback either
    text = "printing Traceback (most recent call last): as a test\nError: no such file\n"
    assert classify_failure(2, text)["kind"] == "exit"


def test_bad_utf8_in_the_tail_is_read_through(tmp_path: Path) -> None:
    log = tmp_path / "stdout.log"
    log.write_bytes(
        b"\xff\xfe garbage \xc3\x28\n"
        b"Traceback (most recent call last):\n"
        b'  File "t.py", line 1, in <module>\n'
        b"RuntimeError: loss is NaN \xe2\x82\n"
    )
    error = classify_failure(1, read_tail(log, 0))
    assert error["kind"] == "exception"
    assert error["message"].startswith("RuntimeError: loss is NaN")


def test_torchrun_child_failure_names_the_rank_error() -> None:
    text = (
        "[rank1]: Traceback (most recent call last):\n"
        '[rank1]:   File "train.py", line 5, in <module>\n'
        '[rank1]:     raise RuntimeError("loss is NaN")\n'
        "[rank1]: RuntimeError: loss is NaN\n"
        "E0101 00:00:00.000 torch/distributed/elastic/multiprocessing/api.py:869] failed "
        "(exitcode: 1) local_rank: 1 (pid: 42) of binary: /usr/bin/python3\n"
        "Traceback (most recent call last):\n"
        '  File "/usr/bin/torchrun", line 8, in <module>\n'
        "    sys.exit(main())\n"
        '  File "torch/distributed/run.py", line 892, in main\n'
        "    run(args)\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
        "============================================================\n"
        "train.py FAILED\n"
        "------------------------------------------------------------\n"
        "Failures:\n"
        "  <NO_OTHER_FAILURES>\n"
        "------------------------------------------------------------\n"
        "Root Cause (first observed failure):\n"
        "[0]:\n"
        "  time      : 2024-01-01_00:00:00\n"
        "  host      : node\n"
        "  rank      : 1 (local_rank: 1)\n"
        "  exitcode  : 1 (pid: 42)\n"
        "  error_file: <N/A>\n"
        "  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html\n"
        "============================================================\n"
    )
    error = classify_failure(1, text)
    assert error["kind"] == "exception"
    assert error["message"] == "RuntimeError: loss is NaN (rank1)"
    assert re.search(r"raise RuntimeError", "\n".join(error["traceback"]))
    # without the worker's own traceback, torchrun's summary names the rank that failed
    worker_lines = text.index("E0101")
    error = classify_failure(1, text[worker_lines:])
    assert error["message"] == "ChildFailedError: rank 1 failed with exit code 1"


# The host's side: the cause the monitor settles on when the agent's error event is not
# in hand (read in an earlier pass than the result, or a line too long to be an event).

TRACE = (
    "iter 3: loss nan\n"
    "Traceback (most recent call last):\n"
    '  File "train.py", line 8, in <module>\n'
    '    raise RuntimeError("loss is NaN")\n'
    "RuntimeError: loss is NaN\n"
)
RESULT_EVENT = {"type": "result", "status": "failed", "step": 3, "final": {}, "best": {}}


def test_settle_takes_the_error_from_result_json_when_the_event_came_earlier(
    tmp_path: Path,
) -> None:
    error = classify_failure(1, TRACE)
    (tmp_path / protocol.RESULT).write_text(json.dumps({"status": "failed", "error": error}))
    state, cause = settle(record(), tmp_path, ExitInfo(1), RESULT_EVENT, None)
    assert state == "failed" and cause is not None
    assert cause.splitlines()[0] == "RuntimeError: loss is NaN"
    assert '    raise RuntimeError("loss is NaN")' in cause


def test_settle_reads_the_output_when_no_error_was_recorded(tmp_path: Path) -> None:
    (tmp_path / protocol.STDOUT).write_bytes(b"\xff\xfe bad bytes\n" + TRACE.encode())
    state, cause = settle(record(), tmp_path, ExitInfo(1), RESULT_EVENT, None)
    assert state == "failed" and cause is not None
    assert cause.splitlines()[0] == "RuntimeError: loss is NaN"


def test_settle_falls_back_to_the_exit_code_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / protocol.STDOUT).write_text("Error: dataset not found\n")
    assert settle(record(), tmp_path, ExitInfo(2), RESULT_EVENT, None) == ("failed", "exit code 2")
    assert settle(record(), tmp_path, ExitInfo(2), None, None) == ("failed", "exit code 2")


def test_settle_does_not_quote_a_log_that_is_a_link(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.log"
    elsewhere.write_text(TRACE)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / protocol.STDOUT).symlink_to(elsewhere)
    assert settle(record(), run_dir, ExitInfo(1), None, None) == ("failed", "exit code 1")
