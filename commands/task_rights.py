"""What a scheduled task may do, by the rules of the chat commands it would run.

The scheduler asks through its `TaskRights` protocol (assistant/scheduler.py) when a task is
added and each time it fires; the answer needs each command's registry entry (`Guard`), so
it lives here, beside the commands, and the scheduler below does not import them.
"""

from __future__ import annotations

from assistant.access import Access
from assistant.scheduler import Refusal
from commands.registry import CommandRouter, looks_like_command


class TaskRights:
    """What a scheduled task may do: asked when it is added, and again each time it fires.

    A command needs its chat to be an admin chat at that moment, a prompt needs its chat
    allowed to talk (the model then gets tools only in an admin chat, as for a live
    message). Some commands are never run by a task at all; that rule lives on the
    command's registry entry (`Guard`).
    """

    def __init__(self, access: Access, router: CommandRouter) -> None:
        self._access = access
        self._router = router

    def unscheduled(self, what: str) -> str | None:
        """Why `what` may never be scheduled, or None."""
        return self._router.rules(what).unscheduled

    def refusal(self, chat_id: str, what: str) -> Refusal | None:
        """Why a task of `chat_id` that runs `what` may not act now, or None."""
        never = self.unscheduled(what)
        if never is not None:
            return Refusal(never)
        if looks_like_command(what):
            if not self._access.may_command(chat_id):
                return Refusal(
                    f"{chat_id} is not an admin chat now, and a scheduled command needs one"
                    " when it runs",
                    "admin",
                )
        elif not self._access.may_talk(chat_id):
            return Refusal(
                f"{chat_id} may not talk to the assistant now, and a scheduled prompt needs"
                " that when it runs",
                "allow",
            )
        return None

    def admin_chats(self) -> list[str]:
        return self._access.admin_chats()
