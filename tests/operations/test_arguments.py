"""The operations' argument models: one sentence per problem, and the schema the model sees."""

from __future__ import annotations

import pytest

from assistant.errors import CommandError
from assistant.operations.arguments import Arguments, json_schema
from assistant.operations.runs import LaunchTraining, RunLogs, RunRef
from assistant.operations.tasks import AddTask, TaskRef


@pytest.mark.parametrize(
    ("model", "raw", "problem"),
    [
        (RunRef, {}, "RunRef needs run_id"),
        (RunRef, {"run_id": "ab", "x": 1, "y": 2}, "RunRef does not take x, y (it takes run_id)"),
        (RunRef, ["ab"], "RunRef takes a JSON object, got list"),
        (TaskRef, {"task_id": "AB"}, "'AB' is not an id: 1 to 13 lower-case letters and digits"),
        (RunLogs, {"run_id": "ab", "lines": 0}, "lines must be a whole number from 1 to 200"),
        (RunLogs, {"run_id": "ab", "lines": 2.5}, "lines must be a whole number from 1 to 200"),
        (
            LaunchTraining,
            {"recipe": "gpt", "params": {"lr": float("nan")}},
            "lr: a value is a number",
        ),
        (
            LaunchTraining,
            {"recipe": "gpt", "params": {"s": "x" * 201}},
            "s: a value is a number, true/false, or short text",
        ),
        (
            AddTask,
            {"kind": "once", "schedule": "x" * 101, "what": "/status"},
            "schedule is longer than 100",
        ),
        (Arguments, {"run_id": "ab"}, "Arguments does not take run_id (it takes no arguments)"),
    ],
)
def test_a_problem_is_one_plain_sentence(model: type[Arguments], raw: object, problem: str) -> None:
    with pytest.raises(CommandError) as caught:
        model.read(raw)
    assert str(caught.value).startswith(problem)
    assert "\n" not in str(caught.value) and "pydantic" not in str(caught.value)


def test_values_arrive_as_given_and_typed() -> None:
    launch = LaunchTraining.read(
        {"recipe": "gpt", "params": {"steps": 5, "lr": 0.5, "compile": False, "tag": "a b"}}
    )
    assert launch.params == {"steps": "5", "lr": "0.5", "compile": "false", "tag": "a b"}
    assert launch.assignments() == ["steps=5", "lr=0.5", "compile=false", "tag=a b"]
    assert RunLogs.read({"run_id": "ab", "lines": 50.0}).lines == 50
    assert RunLogs.read({"run_id": "ab"}).lines == 20
    assert (
        AddTask.read({"kind": "every", "schedule": " 1h ", "what": " /status "}).what == "/status"
    )


def test_the_schema_is_what_a_tool_shows_the_model() -> None:
    schema = json_schema(LaunchTraining)
    assert "title" not in str(schema)
    assert schema["additionalProperties"] is False and schema["required"] == ["recipe"]
    props = schema["properties"]
    assert props["params"]["propertyNames"] == {"pattern": "^[a-z][a-z0-9_]{0,39}$"}
    assert props["recipe"]["pattern"].startswith("^[a-z]")
    assert json_schema(RunRef)["properties"]["run_id"]["pattern"] == "^[0-9a-z]{1,13}$"
