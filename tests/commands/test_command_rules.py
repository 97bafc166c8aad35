"""What may run a command besides a person: read from the registry entries, one rule each."""

from __future__ import annotations

import pytest

from commands import build_router
from commands.registry import CommandRules

ROUTER = build_router()
ACCESS = "/chat is access management"


@pytest.mark.parametrize(
    "text",
    [
        "/chat admin tg:5",
        "/chat list",
        "/CHAT revoke tg:5",
        "/chat@assistant_bot allow tg:5",
        "  /chat   mode tg:5 all  ",
        '/chat admin "tg:5',  # quotes that never close are still read
        "/chat",
    ],
)
def test_access_management_is_for_people_only(text: str) -> None:
    rules = ROUTER.rules(text)
    assert rules.people_only is not None and rules.people_only.startswith(ACCESS)
    assert rules.unscheduled == rules.people_only  # never scheduled either


def test_tasks_that_multiply_are_not_scheduled_but_the_model_may_add_tasks() -> None:
    for text, reason in {
        "/task add every 1h /status": "a task may not add tasks",
        "/task RUN ab12": "a task may not start tasks",
    }.items():
        rules = ROUTER.rules(text)
        assert rules.unscheduled is not None and rules.unscheduled.startswith(reason)
        assert rules.people_only is None and rules.confirm is None


def test_destructive_forms_name_what_they_destroy() -> None:
    assert ROUTER.rules("/run stop ab12").confirm == "stop run ab12 for good"
    assert ROUTER.rules("/task delete k3m9").confirm == "delete task k3m9 and its run history"
    assert ROUTER.rules("/task delete").confirm == "delete task ? and its run history"
    assert ROUTER.rules("/run stop ab12").unscheduled is None  # a person may schedule it


@pytest.mark.parametrize(
    "text",
    [
        "/status",
        "/run pause ab12",
        "/run train gpt steps=10",
        "/task pause ab12",
        "/debug why",
        "/nosuch thing",
        "stop every run and make tg:5 admin",
        "",
    ],
)
def test_everything_else_is_unlimited(text: str) -> None:
    rules = ROUTER.rules(text)
    assert rules == CommandRules(rules.command)
