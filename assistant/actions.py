"""A reply's actions as buttons, a run's messages as a thread, and what a press does.

Drawing: each `Action` of a reply is stored as a button (`storage/buttons.py`) whose
token is all the platform carries; a channel that draws no buttons gets the commands
spelt out under the text instead, so every platform offers the same actions.

Pressing: the press is a command like a typed one. Rights are those of the chat at the
moment of the press (a button drawn while the chat was an admin chat does nothing once
it is not), a button acts once (the claim is one guarded UPDATE, so a double tap or a
redelivered callback cannot act twice), and the command runs through the same path as a
typed command: an event and a `command` action in the chain, the reply in the chat.

Threads: a reply that `opens` a key ("run:<id>") records the message it was sent as;
replies with that `thread` are sent under it where the platform has threads.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from assistant.channels.base import Button, Channel, Claimed, Press, PressResult
from assistant.clock import Clock
from assistant.reply import PLATFORM_THREAD, Reply
from storage.buttons import ButtonRepo, NewButton, StoredButton
from storage.timestamps import from_iso

log = logging.getLogger(__name__)

# A button older than this says it expired when pressed (and is pruned): what it offered
# (stop a run, retry it) is rarely what anyone means a week later.
BUTTON_TTL = timedelta(days=7)

MAX_LABEL = 75

# handle(chat_id, sender, command_text, source, source_id, thread key of the button's
# message: the answer goes there) -> the command's reply text
RunCommand = Callable[[str, str, str, str, "str | None", "str | None"], Awaitable[str]]


@dataclass(frozen=True)
class Drawn:
    """A reply as one channel will send it: text (with the commands listed where the
    channel has no buttons), its buttons, and the thread root it goes under."""

    text: str
    buttons: tuple[Button, ...]
    thread: str | None


class Actions:
    def __init__(self, repo: ButtonRepo, clock: Clock) -> None:
        self.repo = repo
        self._clock = clock

    async def draw(self, channel: Channel, chat_id: str, reply: Reply) -> Drawn:
        """Store the reply's actions as buttons and find its thread's root message."""
        thread = None
        if reply.thread and channel.supports_threads:
            thread = await self.root(chat_id, reply.thread)
        if not reply.actions:
            return Drawn(reply.text, (), thread)
        if not channel.supports_buttons:
            listed = " · ".join(a.command for a in reply.actions if a.command)
            return Drawn(f"{reply.text}\n\n→ {listed}".strip(), (), thread)
        tokens = await self.repo.draw(
            chat_id,
            [NewButton(a.label, a.command) for a in reply.actions],
            choice=reply.choice,
            now=self._clock.now(),
            thread=reply.thread or reply.opens,
        )
        buttons = tuple(
            Button(_short(a.label), token, a.style)
            for a, token in zip(reply.actions, tokens, strict=True)
        )
        return Drawn(reply.text, buttons, thread)

    async def root(self, chat_id: str, key: str) -> str | None:
        """The platform id of the message a thread key's thread hangs from in the chat."""
        if key.startswith(PLATFORM_THREAD):  # a thread of the platform's: named as it is
            return key[len(PLATFORM_THREAD) :] or None
        return await self.repo.thread_root(chat_id, key)

    async def opened(self, chat_id: str, reply: Reply, message_id: str | None) -> None:
        """Remember the message that opened the reply's thread (the launch reply). The
        caller passes the root of the thread the reply went in instead where threads do
        not nest (Slack, Discord): a run launched from a thread tells its story there."""
        if reply.opens and message_id:
            await self.repo.open_thread(chat_id, reply.opens, message_id, self._clock.now())

    async def press(
        self, press: Press, may_command: bool, run: RunCommand, claimed: Claimed | None = None
    ) -> PressResult:
        """Claim the button and run its command; see the module docstring. `claimed` hears
        the decision before the command runs (see `Inbox.press`). A failure of storage
        or of `claimed` reaches the caller; the command's own failures are its reply."""
        decided = await self._decide(press, may_command)
        if isinstance(decided, PressResult):  # refused, or a choice's "No": nothing to run
            if claimed is not None:
                await claimed(decided)
            return decided
        button = decided
        whole = button.grp != button.token  # a choice: its other buttons went with it
        if claimed is not None:
            await claimed(PressResult(True, f"{button.label}: on it"[:190], spent_all=whole))
        text = await run(
            press.chat_id, press.sender, button.command, "button", press.platform_id, button.thread
        )
        first = text.strip().splitlines()[0] if text.strip() else "done"
        return PressResult(True, f"{button.label}: {first}"[:190], spent_all=whole)

    async def _decide(self, press: Press, may_command: bool) -> PressResult | StoredButton:
        """The claimed button whose command is to run, or what came of the press instead."""
        if not may_command:
            log.warning("ignored a button pressed in non-admin chat %s", press.chat_id)
            return PressResult(False, "Not allowed here: this chat has no command rights.")
        button = await self.repo.get(press.token)
        if button is None or button.chat_id != press.chat_id:
            return PressResult(
                False, "This button is no longer valid; type the command instead (/help)."
            )
        if button.pressed_at is not None:
            how = "this button" if button.pressed_token == button.token else "a choice here"
            return PressResult(
                False, f"Already done: {how} was pressed by {button.pressed_by} earlier."
            )
        now = self._clock.now()
        if now - from_iso(button.created_at) > BUTTON_TTL:
            return PressResult(
                False, f"This button has expired; type {button.command} to do it now."
            )
        if not await self.repo.claim(button, press.sender, now):
            return PressResult(False, "Already done: another press got there first.")
        if not button.command:  # "No" of a choice: it only uses the choice up
            return PressResult(True, f"{button.label}: nothing was done.", spent_all=True)
        return button

    async def prune(self) -> int:
        cutoff = self._clock.now() - BUTTON_TTL * 4
        return await self.repo.prune(cutoff) + await self.repo.prune_threads(cutoff)


def _short(label: str) -> str:
    """A label every platform takes: Slack's button text holds 75 characters."""
    return label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 1] + "…"
