"""Who may do what: commands from admin chats only; free text answered in admin and
allowed chats, when addressed (or always, for a chat set to reply to everything).

Admins are the local console, ASSISTANT_ADMIN_CHATS, and chats granted from an admin
chat. The grants are cached here so the check on every message costs no query.
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

    def rights(self, chat: Chat) -> str:
        """How /chat list and `assistant chats` name what a chat may do."""
        if chat.id in self.configured:
            return "admin (config)"
        if chat.is_admin:
            return "admin"
        return "allowed" if chat.allowed else "no rights"

    def answers(self, message: IncomingMessage) -> bool:
        """Whether free text from this message goes to the agent."""
        grant = self._grants.get(message.chat_id, _Grant())
        if not (self.is_admin(message.chat_id) or grant.allowed):
            return False
        return message.addressed or grant.reply_all

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
