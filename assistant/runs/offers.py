"""What a run's messages offer, and where they go: the actions by state, and its thread.

Every message about a run belongs in the run's thread (opened by the reply that launched
it), so a busy channel keeps each run's story in one place. The actions are the commands
someone reading that message most likely wants next: stop or pause a live run, resume a
paused one, retry one that ended badly, read its output. A press is checked like a typed
command when it acts, so offering an action promises nothing about rights.
"""

from __future__ import annotations

import dataclasses

from assistant.jobs.declared import from_json
from assistant.jobs.recipes import RECIPES
from assistant.reply import Action, Reply, run_thread
from storage.runs import RunRecord

_LIVE = ("queued", "starting", "running")
_RETRYABLE = ("failed", "lost", "cancelled")


def run_actions(run: RunRecord, *, resumable: bool) -> tuple[Action, ...]:
    """The next steps a message about `run` offers, for its state now."""
    rid = run.id
    logs = Action("Logs", f"/run logs {rid}")
    if run.state in _LIVE:
        pause = (Action("Pause", f"/run pause {rid}"),) if resumable and run.kind != "bench" else ()
        return (Action("Stop", f"/run stop {rid}", "danger"), *pause, logs)
    if run.state == "paused":
        return (
            Action("Resume", f"/run resume {rid}", "primary"),
            Action("Stop", f"/run stop {rid}", "danger"),
            logs,
        )
    if run.state in _RETRYABLE:
        return (logs, Action("Retry", f"/run retry {rid}", "primary"))
    return (logs,)


def resumable(run: RunRecord) -> bool:
    """Whether the run's recipe resumes from a checkpoint (so it can be paused)."""
    if run.definition is not None:
        try:
            return from_json(run.definition).resume is not None
        except ValueError:  # a stored definition that no longer reads: offer no pause
            return False
    return run.recipe in RECIPES and RECIPES[run.recipe].supports_resume


def in_thread(run: RunRecord, said: str | Reply, *, actions: tuple[Action, ...] = ()) -> Reply:
    """`said` as a message of the run's thread, with `actions` when given."""
    reply = said if isinstance(said, Reply) else Reply(said)
    return dataclasses.replace(reply, thread=run_thread(run.id), actions=actions or reply.actions)


def opening(run: RunRecord, text: str, *, resumable: bool) -> Reply:
    """The reply that launched `run`: it opens the run's thread, with the run's actions."""
    return Reply(text, actions=run_actions(run, resumable=resumable), opens=run_thread(run.id))
