"""Tools -> the typed handler a command runs: the same arguments, checked by the same model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from assistant.agent_tools import RESULT_LIMIT, TOOLS, AgentTools, ToolError, prepare
from assistant.errors import NotFoundError, StateError
from assistant.operations.arguments import Arguments
from assistant.operations.runs import LaunchTraining
from assistant.operations.tasks import AddTask
from assistant.operations.watches import WatchRef
from assistant.redaction import Redactor
from assistant.reply import Reply
from commands import build_router, runs, tasks, watch
from commands.registry import Bound, parse_command

# (tool, its input, the command that does the same)
ROUND_TRIPS: list[tuple[str, dict[str, Any], str]] = [
    ("list_runs", {}, "/runs"),
    ("show_run", {"run_id": "ab12cd"}, "/run show ab12cd"),
    ("run_logs", {"run_id": "ab12cd", "lines": 50}, "/run logs ab12cd 50"),
    ("run_logs", {"run_id": "ab12cd"}, "/run logs ab12cd"),
    ("list_recipes", {"recipe": "gpt"}, "/run recipes gpt"),
    ("list_recipes", {}, "/run recipes"),
    (
        "launch_training",
        {"recipe": "gpt", "params": {"steps": 2000, "lr": 0.0003, "compile": True}, "gpus": 2},
        "/run train gpt steps=2000 lr=0.0003 compile=true gpus=2",
    ),
    ("stop_run", {"run_id": "ab12cd", "confirmed": True}, "/run stop ab12cd"),
    ("pause_run", {"run_id": "ab12cd"}, "/run pause ab12cd"),
    ("resume_run", {"run_id": "ab12cd"}, "/run resume ab12cd"),
    ("retry_run", {"run_id": "ab12cd"}, "/run retry ab12cd"),
    ("list_tasks", {}, "/task list"),
    (
        "add_task",
        {"kind": "every", "schedule": "1h30m", "what": "check the loss of run ab12"},
        "/task add every 1h30m check the loss of run ab12",
    ),
    ("pause_task", {"task_id": "k3m9x2aa"}, "/task pause k3m9x2aa"),
    ("resume_task", {"task_id": "k3m9x2aa"}, "/task resume k3m9x2aa"),
    ("delete_task", {"task_id": "k3m9x2aa", "confirmed": True}, "/task delete k3m9x2aa"),
    ("run_task", {"task_id": "k3m9x2aa"}, "/task run k3m9x2aa"),
    ("watch_job", {"kind": "container", "target": "trainer-7"}, "/watch container trainer-7"),
    (
        "watch_job",
        {"kind": "pid", "target": 4242, "log": "/data/train.log", "pattern": "gpt"},
        "/watch pid 4242 log=/data/train.log pattern=gpt",
    ),
    ("watch_job", {"kind": "slurm", "target": "1234_7"}, "/watch slurm 1234_7"),
    ("list_watches", {}, "/watches"),
    ("show_watch", {"watch_id": "ab12cd"}, "/watch show ab12cd"),
    ("unwatch_job", {"watch_id": "ab12cd"}, "/unwatch ab12cd"),
    ("stop_watched_job", {"watch_id": "ab12cd", "confirmed": True}, "/watch stop ab12cd"),
]
# read-only views whose handlers take their one argument as the command does
VIEWS = {"status", "debug_why", "debug_event", "debug_run"}


def _parsed(text: str) -> Bound:
    cmd = parse_command(text)
    if cmd.name == "runs":
        return Bound(runs.runs_list, prepare("list_runs", {}).arguments)
    if cmd.name == "watches":
        return Bound(watch.listing, Arguments())
    if cmd.name == "unwatch":
        return Bound(watch.unwatch, WatchRef.read({"watch_id": cmd.args[0]}))
    family = {"run": runs.parse, "task": tasks.parse, "watch": watch.parse}[cmd.name]
    return family(cmd)


@pytest.mark.parametrize(("name", "given", "text"), ROUND_TRIPS)
def test_each_tool_runs_what_its_command_parses_to(
    name: str, given: dict[str, Any], text: str
) -> None:
    call = prepare(name, given)
    assert call.bound == _parsed(text)
    assert text.startswith(call.tool.form)


def test_every_tool_is_covered_stands_for_a_command_and_has_a_closed_schema() -> None:
    assert {name for name, _, _ in ROUND_TRIPS} | VIEWS == set(TOOLS)
    router = build_router()
    for tool in TOOLS.values():
        spec = router.find(tool.command[0])
        assert spec is not None and tool.form in spec.usage, tool.name
        schema = tool.param()["input_schema"]
        assert isinstance(schema, dict)
        assert schema["type"] == "object" and schema["additionalProperties"] is False
        assert set(schema["required"]) <= set(schema["properties"])
        assert "title" not in str(schema["properties"])


@pytest.mark.parametrize(
    "value",
    [
        "1 gpus=64",
        "x'; /run stop abc '",
        "‘typographic’ “quotes” stay as typed",
        'a "b" \\c $HOME `d`',
    ],
)
def test_a_value_is_only_ever_that_value(value: str) -> None:
    call = prepare("launch_training", {"recipe": "gpt", "params": {"device": value}})
    assert call.arguments == LaunchTraining(recipe="gpt", params={"device": value})
    assert call.arguments.assignments() == [f"device={value}"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("kind", "schedule", "what"),
    [
        ("cron", "0 2 * * *", "/status"),
        ("every", "1h30m", "check the loss of run ab12 and say if it's flat"),
        ("once", "+30m", "/run logs ab12 50"),
        ("once", "2026-12-01T09:00", 'say "good morning"'),
    ],
)
def test_add_task_keeps_schedule_and_what_intact(kind: str, schedule: str, what: str) -> None:
    call = prepare("add_task", {"kind": kind, "schedule": schedule, "what": what})
    assert call.arguments == AddTask(kind=kind, schedule=schedule, what=what)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "given", "problem"),
    [
        ("show_run", {"run_id": "AB12"}, "is not an id"),
        ("show_run", {"run_id": "../x"}, "is not an id"),
        ("show_run", {"run_id": "a" * 14}, "is not an id"),
        ("show_run", {"run_id": 12}, "is not an id"),
        ("show_run", {}, "show_run needs run_id"),
        ("show_run", {"run_id": "ab", "extra": 1}, "does not take extra"),
        ("run_logs", {"run_id": "ab", "lines": 500}, "from 1 to 200"),
        ("run_logs", {"run_id": "ab", "lines": True}, "from 1 to 200"),
        ("launch_training", {"recipe": "rm -rf"}, "must be a recipe name"),
        ("launch_training", {"recipe": "gpt", "params": {"Steps": 1}}, "not a parameter name"),
        ("launch_training", {"recipe": "gpt", "params": {"x-y": 1}}, "not a parameter name"),
        ("launch_training", {"recipe": "gpt", "params": {"steps": [1]}}, "a value is a number"),
        ("launch_training", {"recipe": "gpt", "gpus": 65}, "from 0 to 64"),
        (
            "launch_training",
            {"recipe": "gpt", "params": {"gpus": 1}, "gpus": 2},
            "give gpus once",
        ),
        ("add_task", {"kind": "hourly", "schedule": "1h", "what": "x"}, "must be one of"),
        ("add_task", {"kind": "every", "schedule": "1h", "what": "  "}, "non-empty text"),
        ("stop_run", {"run_id": "ab", "confirmed": "yes"}, "true or false"),
        ("status", {"confirmed": True}, "does not take confirmed"),
        ("frobnicate", {}, "there is no tool 'frobnicate'"),
        ("status", [], "takes a JSON object"),
    ],
)
def test_bad_input_is_refused_before_anything_runs(name: str, given: Any, problem: str) -> None:
    with pytest.raises(ToolError, match=problem.replace("(", r"\(")):
        prepare(name, given)


def test_a_null_field_is_one_not_given() -> None:
    call = prepare("run_logs", {"run_id": "ab12cd", "lines": None})
    assert call.bound == _parsed("/run logs ab12cd")
    with pytest.raises(ToolError, match="show_run needs run_id"):
        prepare("show_run", {"run_id": None})


class Recorder:
    """An `Invoke` that keeps what it was asked to run and answers with a fixed reply."""

    def __init__(self, reply: Reply, exc: Exception | None = None):
        self.reply, self.exc = reply, exc
        self.calls: list[tuple[str, str, int | None, str, Bound]] = []

    async def __call__(
        self, chat: str, sender: str, event: int | None, command: str, call: Any
    ) -> Reply:
        assert isinstance(call, Bound)
        self.calls.append((chat, sender, event, command, call))
        if self.exc is not None:
            raise self.exc
        return self.reply


async def test_results_are_redacted_and_cut() -> None:
    secret = "hunter2-secret-value"
    run = Recorder(Reply(f"token {secret} " + "é" * 10_000, images=(Path("loss.png"),)))
    tools = AgentTools(run, Redactor([secret]))
    result = await tools.run("list_runs", {}, chat_id="tg:1", sender="ann", event_id=7)
    assert [c[:4] for c in run.calls] == [("tg:1", "ann", 7, "runs")]
    assert run.calls[0][4].handler is runs.runs_list
    assert result.command == "/runs" and secret not in result.text
    assert "[REDACTED]" in result.text and "truncated" in result.text
    assert len(result.text.encode()) <= RESULT_LIMIT


async def test_a_secret_in_the_input_is_masked_before_it_is_used() -> None:
    secret = "hunter2-secret-value"
    run = Recorder(Reply("Task abcd scheduled"))
    tools = AgentTools(run, Redactor([secret]))
    call = {"kind": "every", "schedule": "1h", "what": f"deploy with {secret}"}
    await tools.run("add_task", call, chat_id="tg:1", sender="a", event_id=None)
    (*_, bound) = run.calls[0]
    assert bound.arguments == AddTask(kind="every", schedule="1h", what="deploy with [REDACTED]")


async def test_a_refused_call_is_a_tool_error() -> None:
    paused = AgentTools(Recorder(Reply(""), exc=StateError("run ab is already paused")), Redactor())
    with pytest.raises(ToolError, match="already paused") as caught:
        await paused.run("pause_run", {"run_id": "ab"}, chat_id="tg:1", sender="a", event_id=None)
    assert caught.value.command == "/run pause"
    missing = AgentTools(Recorder(Reply(""), exc=NotFoundError("no run 'zz'")), Redactor())
    with pytest.raises(ToolError, match="no run 'zz'"):
        await missing.run("show_run", {"run_id": "zz"}, chat_id="tg:1", sender="a", event_id=None)


async def test_destructive_tools_need_confirmation_and_run_nothing() -> None:
    run = Recorder(Reply("stopped"))
    tools = AgentTools(run, Redactor())
    for given in ({"run_id": "ab12"}, {"run_id": "ab12", "confirmed": False}):
        result = await tools.run("stop_run", given, chat_id="tg:1", sender="a", event_id=None)
        assert result.text.startswith("Not done: this would stop run ab12 for good")
        assert result.command is None
    assert run.calls == []
    with pytest.raises(ToolError, match="is not an id"):
        await tools.run("delete_task", {"task_id": "X"}, chat_id="tg:1", sender="a", event_id=None)


def test_every_tool_that_can_need_a_yes_can_take_it() -> None:
    tools = AgentTools(Recorder(Reply("")), Redactor())
    for name, given, _ in ROUND_TRIPS:
        if TOOLS[name].schedules is not None:
            continue  # what it schedules decides: the next test
        call = prepare(name, given)
        needs = tools.rules(call.tool, call.arguments).confirm is not None
        assert TOOLS[name].confirmable == needs, name
        assert build_router().rules(_command(name, given)).confirm == (
            tools.rules(call.tool, call.arguments).confirm
        )
    assert TOOLS["add_task"].confirmable  # what it schedules may be destructive


def _command(name: str, given: dict[str, Any]) -> str:
    return next(text for n, g, text in ROUND_TRIPS if n == name and g == given)


async def test_add_task_refuses_access_management_and_asks_before_destruction() -> None:
    run = Recorder(Reply("Task abcd scheduled"))
    tools = AgentTools(run, Redactor())
    call = {"kind": "every", "schedule": "1h"}
    with pytest.raises(ToolError, match="/chat is access management"):
        await tools.run(
            "add_task",
            {**call, "what": "/chat admin tg:5"},
            chat_id="tg:1",
            sender="a",
            event_id=None,
        )
    with pytest.raises(ToolError, match="a task may not add tasks"):
        await tools.run(
            "add_task",
            {**call, "what": "/task add every 1h /status", "confirmed": True},
            chat_id="tg:1",
            sender="a",
            event_id=None,
        )
    asked = await tools.run(
        "add_task", {**call, "what": "/run stop ab12"}, chat_id="tg:1", sender="a", event_id=None
    )
    assert asked.text.startswith(
        "Not done: this would schedule /run stop ab12, which would stop run ab12 for good."
    )
    assert run.calls == []
    done = await tools.run(
        "add_task",
        {**call, "what": "/run stop ab12", "confirmed": True},
        chat_id="tg:1",
        sender="a",
        event_id=None,
    )
    assert done.command == "/task add"
    ((_, _, _, command, bound),) = run.calls
    assert command == "task"
    assert bound == tasks.parse(parse_command("/task add every 1h '/run stop ab12'"))
