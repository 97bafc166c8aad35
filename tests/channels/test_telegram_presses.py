"""Telegram's buttons end to end: a real Orchestrator, the real python-telegram-bot client
and the fake Bot API server. A press is a command like a typed one: checked for the chat's
rights when pressed, acting once, recorded in the chain; a run's messages reply to the
message that launched it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from assistant.channels.telegram import TelegramChannel
from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from assistant.reply import Action, Reply, platform_thread
from assistant.runs.process_runner import ProcessRunner
from commands import build_router
from commands.registry import CommandContext, ParsedCommand
from storage.db import Database
from storage.kv import KeyValue
from tests.fakes.telegram_server import Answer, FakeTelegram, Sent
from tests.support.run_flow import step_of, wait_until

ADMIN = 1001
STRANGER = 2002
GROUP = -3003
RUN_ID = re.compile(r"^Run ([0-9a-z]{6}):", re.M)
NOT_ALLOWED = "Not allowed here: this chat has no command rights."


@dataclass
class Live:
    orch: Orchestrator
    fake: FakeTelegram

    async def say(self, chat: int, text: str, **kwargs: object) -> list[Sent]:
        """Push a message, wait until it is handled, return what the bot sent back."""
        before = len(self.fake.sent.get(chat, []))
        update_id = self.fake.push_message(chat, text, **kwargs)  # type: ignore[arg-type]
        await self.fake.wait_confirmed(update_id)
        await self.orch.settled(f"tg:{chat}")
        return self.fake.sent.get(chat, [])[before:]

    async def press(
        self, chat: int, message_id: int, label: str | None = None, *, data: str | None = None
    ) -> Answer:
        """Press a button, wait until the press is handled to the end; returns the answer."""
        query = self.fake.push_press(chat, message_id, label, data=data)
        await self.fake.wait_confirmed(self.fake.query_updates[query])
        await self.orch.settled(f"tg:{chat}")
        return self.fake.answers[query]

    async def offer(self, chat: int, *actions: Action) -> Sent:
        """A message in `chat` with these actions as buttons, as any reply would carry."""
        assert await self.orch.send(f"tg:{chat}", Reply("What next?", actions=actions), None)
        return self.fake.sent[chat][-1]

    async def rows(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        await self.orch.services.log.flush()
        rows = await self.orch.services.db.fetchall(sql, args)
        return [tuple(row) for row in rows]


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[Live]:
    settings = settings.model_copy(
        update={
            "admin_chats": (f"tg:{ADMIN}",),
            "monitor_interval_s": 0.1,
            "progress_interval_s": 0.5,  # a run's live progress message, edited in place
        }
    )
    fake = FakeTelegram()
    await fake.start()
    db = await Database.open(settings.db_path)
    channel = TelegramChannel(fake.token, api_url=fake.base_url, kv=KeyValue(db), poll_timeout=1.0)
    runner = ProcessRunner(settings.runs_dir)
    try:
        async with Orchestrator(settings, channels=[channel], runner=runner) as orch:
            yield Live(orch, fake)
    finally:
        await db.aclose()
        await fake.aclose()


ADD_TASK = Action("Remind me", '/task add once +2h "look at the loss"', "primary")


async def tasks(live: Live) -> int:
    return int(await live.orch.services.db.scalar("SELECT count(*) FROM tasks") or 0)


async def test_a_press_runs_its_command_once_in_the_chain_and_is_answered(live: Live) -> None:
    offer = await live.offer(ADMIN, ADD_TASK, Action("Status", "/status"))
    assert [label for row in offer.buttons for label, _ in row] == ["Remind me", "Status"]
    assert "/task add" not in offer.text  # drawn as buttons, not listed
    answer = await live.press(ADMIN, offer.message_id, "Remind me")
    assert answer.text == "Remind me: on it" and await tasks(live) == 1
    reply = live.fake.sent[ADMIN][-1]
    assert reply.message_id != offer.message_id and "once" in reply.text.lower()
    assert live.fake.buttons(ADMIN, offer.message_id) == [[("Status", offer.buttons[0][1][1])]]
    events = await live.rows(
        "SELECT e.summary, a.action_type, a.target FROM event_log e JOIN action_log a"
        " ON a.triggered_by = e.id WHERE a.action_type = 'command'"
    )
    assert len(events) == 1
    summary, kind, target = events[0]
    assert str(summary).startswith("Button from ann: /task add once")
    assert (kind, target) == ("command", "/task")


async def test_a_slow_commands_press_is_answered_before_it_runs(settings: Settings) -> None:
    settings = settings.model_copy(update={"admin_chats": (f"tg:{ADMIN}",)})
    fake = FakeTelegram()
    fake.query_max_age_s = 3.0  # Telegram's rule (15 s there), shortened for the test
    await fake.start()
    had_answer: list[bool] = []
    queries: list[str] = []

    async def slow(ctx: CommandContext, cmd: ParsedCommand) -> str:
        """A command slower than a query may wait: it runs until its press was answered,
        or 10 s (past the fake's limit: an answer given after it would be refused)."""
        with contextlib.suppress(TimeoutError):
            await fake.wait_answered(queries[0], timeout=10)
        had_answer.append(queries[0] in fake.answers)
        return "Slow: finished"

    router = build_router()
    router.register(slow, "slow", usage="/slow", summary="waits for its press's answer")
    db = await Database.open(settings.db_path)
    channel = TelegramChannel(fake.token, api_url=fake.base_url, kv=KeyValue(db), poll_timeout=1.0)
    try:
        async with Orchestrator(settings, channels=[channel], router=router) as orch:
            live = Live(orch, fake)
            update = fake.push_message(ADMIN, "slow, please")
            await fake.wait_confirmed(update)
            asked = fake.message_id(update)
            # a button under an answer given in that message's thread
            reply = Reply("Go?", actions=(Action("Slow", "/slow"),))
            in_thread = dataclasses.replace(reply, thread=platform_thread(str(asked)))
            assert await orch.send(f"tg:{ADMIN}", in_thread, None)
            offer = fake.sent[ADMIN][-1]
            query = fake.push_press(ADMIN, offer.message_id, "Slow")
            queries.append(query)
            await fake.wait_confirmed(fake.query_updates[query], timeout=60)
            await orch.settled(f"tg:{ADMIN}")
            assert fake.late_answers == [] and had_answer == [True]
            assert fake.answers[query].text == "Slow: on it"
            assert fake.buttons(ADMIN, offer.message_id) == []  # taken off when claimed
            done = fake.sent[ADMIN][-1]  # the result, a message in the button's thread
            assert done.text == "Slow: finished" and done.reply_to == asked
            events = await live.rows("SELECT summary FROM event_log WHERE source = 'button'")
            assert events == [("Button from ann: /slow",)]
    finally:
        await db.aclose()
        await fake.aclose()


async def test_a_button_pressed_twice_acts_once(live: Live) -> None:
    offer = await live.offer(ADMIN, ADD_TASK)
    token = offer.buttons[0][0][1]
    first = await live.press(ADMIN, offer.message_id, "Remind me")
    replies = len(live.fake.sent[ADMIN])
    # the second tap: sent before the keyboard went, so it carries the same data
    second = await live.press(ADMIN, offer.message_id, data=token)
    assert first.text.startswith("Remind me: ")
    assert second.text == "Already done: this button was pressed by ann earlier."
    assert await tasks(live) == 1 and len(live.fake.sent[ADMIN]) == replies
    assert len(await live.rows("SELECT id FROM action_log WHERE action_type = 'command'")) == 1


async def test_a_choice_pressed_takes_all_its_buttons_off_and_acts_once(live: Live) -> None:
    no = Action("No", "/status")
    assert await live.orch.send(
        f"tg:{ADMIN}", Reply("Add the reminder?", actions=(ADD_TASK, no), choice=True), None
    )
    offer = live.fake.sent[ADMIN][-1]
    no_token = offer.buttons[0][1][1]
    answer = await live.press(ADMIN, offer.message_id, "Remind me")
    assert answer.text.startswith("Remind me: ") and await tasks(live) == 1
    assert live.fake.buttons(ADMIN, offer.message_id) == []
    other = await live.press(ADMIN, offer.message_id, data=no_token)  # tapped meanwhile
    assert other.text == "Already done: a choice here was pressed by ann earlier."


async def test_a_press_from_a_chat_without_rights_does_nothing_and_is_answered(
    live: Live,
) -> None:
    await live.say(STRANGER, "hello?")  # known to the assistant, no rights
    offer = await live.offer(STRANGER, ADD_TASK)  # a button there (as if drawn earlier)
    answer = await live.press(STRANGER, offer.message_id, "Remind me")
    assert answer.text == NOT_ALLOWED
    assert await tasks(live) == 0 and live.fake.sent[STRANGER] == [offer]
    assert live.fake.buttons(STRANGER, offer.message_id) != []
    assert await live.rows("SELECT id FROM action_log WHERE action_type = 'command'") == []


async def test_an_admin_chats_token_pressed_in_another_chat_does_nothing(live: Live) -> None:
    offer = await live.offer(ADMIN, ADD_TASK)
    await live.say(STRANGER, "hello?")
    mine = await live.offer(STRANGER, Action("Status", "/status"))
    forged = await live.press(STRANGER, mine.message_id, data=offer.buttons[0][0][1])
    assert forged.text == NOT_ALLOWED and await tasks(live) == 0
    # and in an admin chat, a token drawn for another chat is no button of this one
    await live.orch.services.access.grant(f"tg:{STRANGER}", admin=True, allowed=True)
    other = await live.offer(ADMIN, Action("Status", "/status"))
    crossed = await live.press(STRANGER, mine.message_id, data=other.buttons[0][0][1])
    assert crossed.text.startswith("This button is no longer valid") and await tasks(live) == 0


async def test_a_press_after_the_chat_lost_its_rights_does_nothing(live: Live) -> None:
    (granted,) = await live.say(ADMIN, f"/chat admin tg:{GROUP}")
    assert "is an admin chat now" in granted.text
    await live.say(GROUP, "hello", chat_type="supergroup")
    offer = await live.offer(GROUP, ADD_TASK)  # drawn while the group may command
    (revoked,) = await live.say(ADMIN, f"/chat revoke tg:{GROUP}")
    assert "may no longer command" in revoked.text
    answer = await live.press(GROUP, offer.message_id, "Remind me")
    assert answer.text == NOT_ALLOWED and await tasks(live) == 0
    assert len(live.fake.sent[GROUP]) == 1
    # given back, the same button acts: it was never used
    await live.say(ADMIN, f"/chat admin tg:{GROUP}")
    again = await live.press(GROUP, offer.message_id, "Remind me")
    assert again.text.startswith("Remind me: ") and await tasks(live) == 1


async def test_a_reply_is_in_a_thread_and_is_answered_by_replying_to_it(live: Live) -> None:
    (top,) = await live.say(ADMIN, "/status")
    assert "Uptime:" in top.text and top.reply_to is None  # typed at the top: answered there
    update = live.fake.push_message(ADMIN, "/status", reply_to_message_id=top.message_id)
    await live.fake.wait_confirmed(update)
    await live.orch.settled(f"tg:{ADMIN}")
    answer = live.fake.sent[ADMIN][-1]
    assert "Uptime:" in answer.text and answer.reply_to == live.fake.message_id(update)
    # free text in the chain: the model's answer continues it too
    update = live.fake.push_message(ADMIN, "and the GPUs?", reply_to_message_id=answer.message_id)
    await live.fake.wait_confirmed(update)
    await live.orch.settled(f"tg:{ADMIN}")
    said = live.fake.sent[ADMIN][-1]
    assert said.text.startswith("No model is configured")
    assert said.reply_to == live.fake.message_id(update)


async def test_a_reply_in_a_chat_without_rights_gets_nothing(live: Live) -> None:
    offer = await live.offer(GROUP, ADD_TASK)  # a message of the bot's to reply to
    update = live.fake.push_message(
        GROUP, '/task add once +2h "x"', "supergroup", reply_to_message_id=offer.message_id
    )
    await live.fake.wait_confirmed(update)
    await live.orch.settled(f"tg:{GROUP}")
    assert live.fake.sent[GROUP] == [offer] and await tasks(live) == 0


def menu_of(fake: FakeTelegram, chat: int | None) -> list[str] | None:
    scope = {"type": "default"} if chat is None else {"type": "chat", "chat_id": chat}
    menu = fake.menus.get(json.dumps(scope, sort_keys=True))
    return None if menu is None else [c["command"] for c in menu]


async def test_the_menu_follows_the_rights_as_they_change(live: Live) -> None:
    every = list(live.orch.router.commands)
    assert menu_of(live.fake, ADMIN) == every and menu_of(live.fake, None) == ["help"]
    assert menu_of(live.fake, GROUP) is None
    await live.say(ADMIN, f"/chat admin tg:{GROUP}")
    assert menu_of(live.fake, GROUP) == every  # at once, not at the next start
    await live.say(ADMIN, f"/chat revoke tg:{GROUP}")
    assert menu_of(live.fake, GROUP) is None  # deleted: the group sees the default, /help
    assert menu_of(live.fake, ADMIN) == every


async def test_a_chat_granted_earlier_gets_the_full_menu_at_start(settings: Settings) -> None:
    settings = settings.model_copy(update={"admin_chats": (f"tg:{ADMIN}",)})
    fake = FakeTelegram()
    await fake.start()
    db = await Database.open(settings.db_path)

    def channel() -> TelegramChannel:
        return TelegramChannel(fake.token, api_url=fake.base_url, kv=KeyValue(db), poll_timeout=1)

    try:
        async with Orchestrator(settings, channels=[channel()]) as orch:
            # granted in the database (not through /chat, which updates menus at once)
            await orch.services.access.grant(f"tg:{GROUP}", admin=True, allowed=True)
        assert menu_of(fake, GROUP) is None
        async with Orchestrator(settings, channels=[channel()]) as orch:
            every = list(orch.router.commands)
        assert menu_of(fake, GROUP) == every and menu_of(fake, ADMIN) == every
    finally:
        await db.aclose()
        await fake.aclose()


async def test_a_run_launched_from_telegram_offers_buttons_and_its_messages_reply_to_the_launch(
    live: Live,
) -> None:
    (launch,) = await live.say(ADMIN, "/run train classifier steps=10 gpus=0")
    match = RUN_ID.search(launch.text)
    assert match, launch.text
    run_id = match.group(1)
    labels = [label for row in launch.buttons for label, _ in row]
    assert "Stop" in labels and "Logs" in labels
    assert launch.markup is not None
    styles = {b["text"]: b.get("style") for row in launch.markup["inline_keyboard"] for b in row}
    assert styles["Stop"] == "danger"
    report = await wait_for(live, f"Run {run_id} (classifier) succeeded")
    assert report.reply_to == launch.message_id
    await live.fake.wait_calls("sendPhoto", 1)  # the report's plot follows its text
    (photo,) = live.fake.photos[ADMIN]
    assert photo.reply_to == launch.message_id
    later = [s for s in live.fake.sent[ADMIN] if s.message_id > launch.message_id]
    assert later and all(s.reply_to == launch.message_id for s in later)
    # Logs, pressed under the launch message once the run is done, still answers
    answer = await live.press(ADMIN, launch.message_id, "Logs")
    assert answer.text == "Logs: on it"
    assert live.fake.sent[ADMIN][-1].text.startswith(f"Run {run_id}, last")
    assert [label for row in live.fake.buttons(ADMIN, launch.message_id) for label, _ in row] == [
        label for label in labels if label != "Logs"
    ]


async def wait_for(live: Live, needle: str, timeout: float = 120) -> Sent:
    async with asyncio.timeout(timeout):
        while True:
            for sent in live.fake.sent.get(ADMIN, []):
                if needle in sent.text:
                    return sent
            await live.fake.wait_sent(ADMIN, len(live.fake.sent.get(ADMIN, [])) + 1, timeout)


async def test_stop_pressed_under_the_launch_message_stops_the_run_once(live: Live) -> None:
    (launch,) = await live.say(ADMIN, "/run train classifier steps=400 gpus=0 sleep_per_step=0.2")
    match = RUN_ID.search(launch.text)
    assert match, launch.text
    run_id = match.group(1)
    stop_token = dict(b for row in launch.buttons for b in row)["Stop"]
    repo = live.orch.services.runs.repo
    await wait_until(lambda: step_of(repo, run_id), 2, timeout=120)
    answer = await live.press(ADMIN, launch.message_id, "Stop")
    assert answer.text == "Stop: on it"  # answered before the stop ran; its reply follows
    stopping = f"Run {run_id}: stopping. It checkpoints, then stops; the report follows."
    assert any(s.text == stopping for s in live.fake.sent[ADMIN])
    left = [label for row in live.fake.buttons(ADMIN, launch.message_id) for label, _ in row]
    assert "Stop" not in left and "Logs" in left
    again = await live.press(ADMIN, launch.message_id, data=stop_token)  # a second tap
    assert again.text == "Already done: this button was pressed by ann earlier."
    report = await wait_for(live, f"Run {run_id} (classifier) cancelled", timeout=90)
    assert report.reply_to == launch.message_id
    # the live progress message, the stop's reply and the report: all under the launch
    later = [s for s in live.fake.sent[ADMIN] if s.message_id > launch.message_id]
    assert len(later) >= 3 and all(s.reply_to == launch.message_id for s in later)
    progress = {e.message_id for e in live.fake.edits.get(ADMIN, [])}
    assert progress and progress <= {s.message_id for s in later}
    stops = await live.rows(
        "SELECT e.source FROM event_log e JOIN action_log a ON a.triggered_by = e.id"
        " WHERE a.action_type = 'command' AND e.summary LIKE '%/run stop%'"
    )
    assert stops == [("button",)]
    run = await repo.get(run_id)
    assert run is not None and run.wanted != "kill"  # pressed once: never escalated to a kill
