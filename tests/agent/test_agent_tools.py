"""Tools -> command text: every value stays one word, every id and key is checked first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from assistant.agent_tools import RESULT_LIMIT, TOOLS, AgentTools, ToolError, command_for
from assistant.errors import NotFoundError
from assistant.redaction import Redactor
from assistant.reply import Reply
from commands import build_router
from commands.registry import parse_command
from commands.tasks import _split_head

ROUND_TRIPS: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    ("status", {}, ()),
    ("list_runs", {}, ()),
    ("show_run", {"run_id": "ab12cd"}, ("show", "ab12cd")),
    ("run_logs", {"run_id": "ab12cd", "lines": 50}, ("logs", "ab12cd", "50")),
    ("run_logs", {"run_id": "ab12cd"}, ("logs", "ab12cd")),
    ("list_recipes", {"recipe": "gpt"}, ("recipes", "gpt")),
    (
        "launch_training",
        {"recipe": "gpt", "params": {"steps": 2000, "lr": 0.0003, "compile": True}, "gpus": 2},
        ("train", "gpt", "steps=2000", "lr=0.0003", "compile=true", "gpus=2"),
    ),
    ("stop_run", {"run_id": "ab12cd", "confirmed": True}, ("stop", "ab12cd")),
    ("pause_run", {"run_id": "ab12cd"}, ("pause", "ab12cd")),
    ("resume_run", {"run_id": "ab12cd"}, ("resume", "ab12cd")),
    ("retry_run", {"run_id": "ab12cd"}, ("retry", "ab12cd")),
    ("list_tasks", {}, ("list",)),
    ("pause_task", {"task_id": "k3m9x2aa"}, ("pause", "k3m9x2aa")),
    ("resume_task", {"task_id": "k3m9x2aa"}, ("resume", "k3m9x2aa")),
    ("delete_task", {"task_id": "k3m9x2aa", "confirmed": True}, ("delete", "k3m9x2aa")),
    ("run_task", {"task_id": "k3m9x2aa"}, ("run", "k3m9x2aa")),
    ("debug_why", {}, ("why",)),
    ("debug_why", {"id": "0123456789abc"}, ("why", "0123456789abc")),
    ("debug_event", {"id": "0123456789abc"}, ("event", "0123456789abc")),
    ("debug_run", {"run_id": "ab12cd"}, ("run", "ab12cd")),
]


@pytest.mark.parametrize(("name", "given", "args"), ROUND_TRIPS)
def test_each_tool_is_the_command_it_stands_for(
    name: str, given: dict[str, Any], args: tuple[str, ...]
) -> None:
    assert parse_command(command_for(name, given)).args == args


def test_every_tool_is_covered_and_has_a_closed_schema() -> None:
    assert {name for name, _, _ in ROUND_TRIPS} | {"add_task"} == set(TOOLS)
    for tool in TOOLS.values():
        schema = tool.param()["input_schema"]
        assert isinstance(schema, dict)
        assert schema["type"] == "object" and schema["additionalProperties"] is False
        assert set(tool.required) <= set(tool.properties)


@pytest.mark.parametrize(
    "value",
    [
        "1 gpus=64",
        "x'; /run stop abc '",
        "‘typographic’ “quotes” stay one word",
        'a "b" \\c $HOME `d`',
    ],
)
def test_no_value_can_add_words(value: str) -> None:
    text = command_for("launch_training", {"recipe": "gpt", "params": {"device": value}})
    args = parse_command(text).args
    assert len(args) == 3 and args[2].startswith("device=")
    plain = value.translate(str.maketrans("‘’“”", "''\"\""))
    assert args[2] == f"device={plain}"


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
    text = command_for("add_task", {"kind": kind, "schedule": schedule, "what": what})
    parsed = parse_command(text)
    words, rest = _split_head(parsed.raw_args, 3)
    assert words == ["add", kind, schedule] and rest == what


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
        (
            "launch_training",
            {"recipe": "gpt", "params": {"gpus": 1}, "gpus": 2},
            "give gpus once",
        ),
        ("add_task", {"kind": "hourly", "schedule": "1h", "what": "x"}, "must be one of"),
        ("add_task", {"kind": "every", "schedule": "1h", "what": "  "}, "non-empty text"),
        ("stop_run", {"run_id": "ab", "confirmed": "yes"}, "true or false"),
        ("frobnicate", {}, "there is no tool 'frobnicate'"),
        ("status", [], "takes a JSON object"),
    ],
)
def test_bad_input_is_refused_before_any_command(name: str, given: Any, problem: str) -> None:
    with pytest.raises(ToolError, match=problem.replace("(", r"\(")):
        command_for(name, given)


class Recorder:
    def __init__(self, reply: Reply, error: str | None = None, exc: Exception | None = None):
        self.reply, self.error, self.exc = reply, error, exc
        self.calls: list[tuple[str, str, str, int | None]] = []

    async def __call__(
        self, chat: str, sender: str, text: str, event: int | None
    ) -> tuple[Reply, str | None]:
        self.calls.append((chat, sender, text, event))
        if self.exc is not None:
            raise self.exc
        return self.reply, self.error


async def test_results_are_redacted_and_cut() -> None:
    secret = "hunter2-secret-value"
    run = Recorder(Reply(f"token {secret} " + "é" * 10_000, images=(Path("loss.png"),)))
    tools = AgentTools(run, Redactor([secret]))
    result = await tools.run("list_runs", {}, chat_id="tg:1", sender="ann", event_id=7)
    assert run.calls == [("tg:1", "ann", "/runs", 7)]
    assert result.command == "/runs" and secret not in result.text
    assert "[REDACTED]" in result.text and "truncated" in result.text
    assert len(result.text.encode()) <= RESULT_LIMIT


async def test_a_refused_command_is_a_tool_error() -> None:
    tools = AgentTools(Recorder(Reply("Run ab is already paused."), error="paused"), Redactor())
    with pytest.raises(ToolError, match="already paused") as caught:
        await tools.run("pause_run", {"run_id": "ab"}, chat_id="tg:1", sender="a", event_id=None)
    assert caught.value.command == "/run pause ab"
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
    router = build_router()
    for name, given, _ in ROUND_TRIPS:
        needs = router.rules(command_for(name, given)).confirm is not None
        assert TOOLS[name].confirmable == needs, name
    assert TOOLS["add_task"].confirmable  # what it schedules may be destructive


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
    assert done.command == "/task add every 1h '/run stop ab12'"
    assert len(run.calls) == 1
