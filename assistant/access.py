"""Who may do what: commands from admin chats only; free text answered in admin and
allowed chats, when addressed (or always, for a chat set to reply to everything).

Admins are the local console, ASSISTANT_ADMIN_CHATS, and chats granted from an admin
chat. The grants are cached here so the check on every message costs no query.

The same two checks (`may_command`, `may_talk`) decide for a live message and for a
scheduled task at the moment it fires (`commands/task_rights.py`): a task never keeps the
rights its chat had when it was added.
"""

from __future__ import annotations

from dataclasses import dataclass

from assistant.channels.base import IncomingMessage
from storage.chats import Chat, ChatRepo

LOCAL_ADMIN_CHAT = "local:console"


@dataclass
class _Grant:
    admin: bool = False
    allowed: bool = False
    reply_all: bool = False


class Access:
    def __init__(self, chats: ChatRepo, configured_admins: tuple[str, ...]) -> None:
        self._chats = chats
        self.configured = frozenset({LOCAL_ADMIN_CHAT, *configured_admins})
        self._grants: dict[str, _Grant] = {}

    async def load(self) -> None:
        self._grants = {c.id: _grant(c) for c in await self._chats.all()}

    def is_admin(self, chat_id: str) -> bool:
        return chat_id in self.configured or self._grants.get(chat_id, _Grant()).admin

    def may_command(self, chat_id: str) -> bool:
        """Commands (and the model's tools) are for admin chats."""
        return self.is_admin(chat_id)

    def may_talk(self, chat_id: str) -> bool:
        """Free text is answered in admin chats and allowed ones."""
        return self.is_admin(chat_id) or self._grants.get(chat_id, _Grant()).allowed

    def admin_chats(self) -> list[str]:
        """Every admin chat now: the console, the configured ones, then the granted ones."""
        configured = [LOCAL_ADMIN_CHAT, *sorted(self.configured - {LOCAL_ADMIN_CHAT})]
        granted = sorted(c for c, g in self._grants.items() if g.admin and c not in configured)
        return [*configured, *granted]

    def rights(self, chat: Chat) -> str:
        """How /chat list and `assistant chats` name what a chat may do."""
        if chat.id in self.configured:
            return "admin (config)"
        if chat.is_admin:
            return "admin"
        return "allowed" if chat.allowed else "no rights"

    def answers(self, message: IncomingMessage) -> bool:
        """Whether free text from this message goes to the agent."""
        if not self.may_talk(message.chat_id):
            return False
        return message.addressed or self._grants.get(message.chat_id, _Grant()).reply_all

    async def grant(
        self,
        chat_id: str,
        *,
        admin: bool | None = None,
        allowed: bool | None = None,
        reply_mode: str | None = None,
    ) -> Chat:
        chat = await self._chats.grant(chat_id, admin=admin, allowed=allowed, reply_mode=reply_mode)
        self._grants[chat_id] = _grant(chat)
        return chat


def _grant(chat: Chat) -> _Grant:
    return _Grant(admin=chat.is_admin, allowed=chat.allowed, reply_all=chat.reply_mode == "all")
