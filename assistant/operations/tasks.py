"""Task operations: add a scheduled command or prompt, pause, resume, delete, run now, list.

`/task ...` parses its words into these arguments and the model's tools pass their JSON;
the scheduler checks the schedule and the rights (`TaskRights`: what may never be
scheduled, and, when it fires, what the task's chat may do then).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BeforeValidator, Field

from assistant.observability import current_action
from assistant.operations.arguments import MAX_TEXT, Arguments, Id, text
from assistant.operations.caller import Caller

if TYPE_CHECKING:
    from assistant.scheduler import TaskScheduler
    from storage.tasks import Task

KINDS = ("cron", "every", "once")
MAX_SCHEDULE = 100


def _kind(value: object) -> str:
    if value not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {value!r}")
    assert isinstance(value, str)
    return value


class TaskRef(Arguments):
    """One task, by its id or a unique prefix of it."""

    task_id: Id


class AddTask(Arguments):
    """A built-in command (like /status) or a prompt, on a schedule of its kind."""

    kind: Annotated[Literal["cron", "every", "once"], BeforeValidator(_kind)]
    schedule: Annotated[str, text("schedule", MAX_SCHEDULE), Field(max_length=MAX_SCHEDULE)]
    what: Annotated[str, text("what", MAX_TEXT), Field(max_length=MAX_TEXT)]


class TaskOperations:
    """Every request about tasks, for commands and tools alike."""

    def __init__(self, scheduler: TaskScheduler) -> None:
        self._scheduler = scheduler

    async def add(self, caller: Caller, args: AddTask) -> Task:
        """:raises CommandError: a bad schedule, or what may never be scheduled."""
        return await self._scheduler.add(
            caller.chat_id, args.kind, args.schedule, args.what, triggered_by=caller.event_id
        )

    async def pause(self, caller: Caller, ref: TaskRef) -> Task:
        """:raises NotFoundError, AmbiguousIdError, StateError: no such task; not active."""
        return await self._scheduler.pause(ref.task_id, triggered_by=caller.event_id)

    async def resume(self, caller: Caller, ref: TaskRef) -> Task:
        """:raises StateError: not paused, passed, or its chat lacks the rights now."""
        return await self._scheduler.resume(ref.task_id, triggered_by=caller.event_id)

    async def delete(self, caller: Caller, ref: TaskRef) -> Task:
        return await self._scheduler.delete(ref.task_id, triggered_by=caller.event_id)

    async def run_now(self, caller: Caller, ref: TaskRef) -> Task:
        """Start a firing in the background; it hangs off the action this request runs in
        (the command's, or the model call's for a tool)."""
        return await self._scheduler.run_now(ref.task_id, current_action.get())

    async def listing(self) -> list[Task]:
        return await self._scheduler.list_tasks()
