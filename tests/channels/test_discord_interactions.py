"""Discord's native parts end to end: slash commands registered from the registry and
answered, buttons drawn and pressed, run messages in threads. A real discord.py client
against the fake Discord (gateway INTERACTION_CREATE, REST, interaction callbacks and
webhooks over 127.0.0.1), a real Orchestrator behind it."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from assistant.channels.base import Button
from assistant.channels.discord import DESCRIPTION_LIMIT, DiscordChannel
from assistant.config import Settings
from assistant.orchestrator import Orchestrator
from assistant.reply import Action, Reply, platform_thread
from assistant.runs.process_runner import ProcessRunner
from commands import build_router
from commands.registry import CommandContext, ParsedCommand
from tests.fakes.anthropic_server import FakeAnthropic, ToolUse
from tests.fakes.anthropic_server import Reply as Answer
from tests.fakes.discord_server import (
    ADMIN_CHANNEL,
    EPHEMERAL,
    GUILD_ID,
    OTHER_CHANNEL,
    TOKEN,
    FakeDiscord,
    Interaction,
    Json,
)
from tests.support.model_service import model_settings
from tests.support.run_flow import RUN_ID, step_of, wait_until

ADMIN = f"dc:{ADMIN_CHANNEL}"
OTHER = f"dc:{OTHER_CHANNEL}"
DM_CHANNEL = 4242
THREADS = "POST /channels/{channel_id}/messages/{message_id}/threads"


@dataclass
class Env:
    fake: FakeDiscord
    channel: DiscordChannel
    orch: Orchestrator

    async def command(
        self, channel_id: int, name: str, args: str | None = None, **kw: Any
    ) -> Interaction:
        """Run a slash command; return its interaction once its answer is final."""
        iid = await self.fake.push_command(channel_id, name, args, **kw)
        return await self.final(iid, lambda i: bool(i.edits) or i.deleted)

    async def press(self, channel_id: int, message_id: int, token: str) -> Interaction:
        """Press a button; return its interaction once the press was answered."""
        iid = await self.fake.push_press(channel_id, message_id, token)
        return await self.final(iid, lambda i: bool(i.edits or i.followups))

    async def final(self, iid: int, done: Callable[[Interaction], bool]) -> Interaction:
        interaction = self.fake.interactions[iid]
        await self.fake.wait_for(lambda: done(interaction))
        return interaction

    async def events(self) -> list[str]:
        await self.orch.services.log.flush()
        rows = await self.orch.services.db.fetchall("SELECT summary FROM event_log")
        return [r["summary"] for r in rows]

    async def tasks(self) -> int:
        return int(await self.orch.services.db.scalar("SELECT count(*) FROM tasks") or 0)

    async def draw(self, chat_id: str, *actions: Action, choice: bool = False) -> Json:
        """A message with buttons, sent as the orchestrator sends every reply."""
        channel_id = int(chat_id.split(":")[1])
        before = len(self.fake.sent[channel_id])
        reply = Reply("Pick one", actions=actions, choice=choice)
        assert await self.orch.send(chat_id, reply, None)
        message = self.fake.message(self.fake.sent[channel_id][before].id)
        assert message is not None
        return message

    def texts(self, channel_id: int) -> list[str]:
        return [m.content for m in self.fake.sent[channel_id]]


def _buttons(message: Json) -> list[Json]:
    return [b for row in message["components"] for b in row["components"]]


def _settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"admin_chats": (ADMIN, f"dc:{DM_CHANNEL}")})


def _channel(fake: FakeDiscord, guild_id: int | None = None) -> DiscordChannel:
    return DiscordChannel(
        TOKEN, api_url=fake.api_url, gateway_url=fake.gateway_url, guild_id=guild_id
    )


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    server = FakeDiscord()
    await server.start()
    yield server
    await server.aclose()


@pytest.fixture
async def env(settings: Settings, fake: FakeDiscord) -> AsyncIterator[Env]:
    channel = _channel(fake)
    async with Orchestrator(_settings(settings), channels=[channel]) as orch:
        yield Env(fake, channel, orch)


# ---- slash commands ---------------------------------------------------------------------


async def test_the_slash_commands_are_the_registry_exactly(env: Env) -> None:
    (commands,) = env.fake.commands.values()  # global: no guild is configured
    assert list(env.fake.commands) == ["global"]
    assert sorted(c["name"] for c in commands) == sorted(env.orch.router.commands)
    for command in commands:
        assert command["type"] == 1 and 1 <= len(command["description"]) <= DESCRIPTION_LIMIT
        (option,) = command["options"]
        assert (option["name"], option["type"], option["required"]) == ("args", 3, False)
    status = next(c for c in commands if c["name"] == "status")
    assert status["description"] == env.orch.router.commands["status"].summary


async def test_with_a_guild_the_commands_are_the_guilds_and_a_removed_one_disappears(
    settings: Settings, fake: FakeDiscord
) -> None:
    stale = {"name": "oldcmd", "type": 1, "description": "gone from the registry"}
    fake.commands[GUILD_ID] = [stale]
    fake.commands["global"] = [{**stale, "name": "status"}]  # registered before, globally
    channel = _channel(fake, guild_id=GUILD_ID)
    async with Orchestrator(_settings(settings), channels=[channel]) as orch:
        names = sorted(c["name"] for c in fake.commands[GUILD_ID])
        assert names == sorted(orch.router.commands) and "oldcmd" not in names
        assert fake.commands["global"] == []  # nothing shows twice
        puts = [r for r in fake.requests if r[0].startswith("PUT /applications")]
        assert puts == [
            ("PUT /applications/{app_id}/guilds/{guild_id}/commands", 200),
            ("PUT /applications/{app_id}/commands", 200),
        ]


async def test_a_slash_command_is_deferred_and_its_reply_edits_the_response(env: Env) -> None:
    asked = await env.command(ADMIN_CHANNEL, "status")
    assert [c["type"] for c in asked.callbacks] == [5]  # "assistant is thinking…"
    answer = env.fake.message(asked.original or 0)
    assert answer is not None and "Uptime:" in answer["content"]
    assert answer["flags"] == 0 and answer["channel_id"] == str(ADMIN_CHANNEL)
    assert env.fake.sent[ADMIN_CHANNEL] == []  # the answer is the response, not a 2nd message
    assert asked.edits[0]["allowed_mentions"] == {"parse": []}


async def test_a_slash_command_is_a_command_in_the_chain(env: Env) -> None:
    asked = await env.command(ADMIN_CHANNEL, "task", "add every 1h /status")
    answer = env.fake.message(asked.original or 0)
    assert answer is not None and answer["content"].startswith("Task ")
    assert await env.tasks() == 1
    assert "Command from ann: /task add every 1h /status" in await env.events()


@pytest.mark.parametrize(
    "route",
    [
        "PATCH /webhooks/{app_id}/{token}/messages/@original",  # expired: 15 minutes passed
        "POST /interactions/{id}/{token}/callback",  # not acknowledged within 3 s
    ],
    ids=["response-expired", "too-late-to-acknowledge"],
)
async def test_when_the_response_cannot_carry_it_the_answer_is_a_message(
    env: Env, route: str
) -> None:
    env.fake.fail_next(route, 401 if route.startswith("PATCH") else 404)
    await env.fake.push_command(ADMIN_CHANNEL, "status")
    (answer,) = await env.fake.wait_sent(ADMIN_CHANNEL, 1)
    assert "Uptime:" in answer.content and env.fake.count(route) == 1


async def test_a_slash_commands_args_are_the_commands_words(env: Env) -> None:
    asked = await env.command(ADMIN_CHANNEL, "help", "task")
    answer = env.fake.message(asked.original or 0)
    assert answer is not None and answer["content"].startswith("/task:")


async def test_a_slash_command_from_a_chat_without_rights_leaves_nothing(env: Env) -> None:
    asked = await env.command(OTHER_CHANNEL, "status")
    assert [c["type"] for c in asked.callbacks] == [5] and asked.deleted and not asked.edits
    assert env.fake.message(asked.original or 0) is None
    assert env.fake.sent[OTHER_CHANNEL] == []


async def test_a_slash_command_in_a_dm_of_an_admin_is_answered(env: Env) -> None:
    asked = await env.command(DM_CHANNEL, "help", "run", guild=False)
    answer = env.fake.message(asked.original or 0)
    assert answer is not None and answer["content"].startswith("/run")


# ---- buttons ----------------------------------------------------------------------------


async def test_buttons_are_drawn_with_their_tokens_and_styles(env: Env) -> None:
    message = await env.draw(
        ADMIN,
        Action("Stop", "/status", "danger"),
        Action("Resume", "/status", "primary"),
        Action("Logs", "/help"),
    )
    buttons = _buttons(message)
    assert [(b["type"], b["label"], b["style"]) for b in buttons] == [
        (2, "Stop", 4),
        (2, "Resume", 1),
        (2, "Logs", 2),
    ]
    tokens = [b["custom_id"] for b in buttons]
    stored = await env.orch.services.db.fetchall("SELECT token FROM buttons")
    assert sorted(tokens) == sorted(r["token"] for r in stored)
    assert message["components"][0]["type"] == 1  # one action row


async def test_a_press_runs_its_command_once_and_marks_the_message(env: Env) -> None:
    message = await env.draw(ADMIN, Action("Hourly", "/task add every 1h /status", "primary"))
    (button,) = _buttons(message)
    pressed = await env.press(ADMIN_CHANNEL, int(message["id"]), button["custom_id"])
    assert [c["type"] for c in pressed.callbacks] == [6]  # deferred update, at once
    edited = env.fake.message(int(message["id"]))
    assert edited is not None and edited["components"] == []
    assert edited["content"] == "Pick one\n*Hourly — pressed by ann*"
    replies = env.texts(ADMIN_CHANNEL)[1:]
    assert len(replies) == 1 and replies[0].startswith("Task ")  # the command's reply
    assert await env.tasks() == 1
    assert (await env.events()).count("Button from ann: /task add every 1h /status") == 1

    again = await env.press(ADMIN_CHANNEL, int(message["id"]), button["custom_id"])
    (note,) = again.followups
    assert note["flags"] == EPHEMERAL and note["content"].startswith("Already done")
    assert not again.edits and len(env.texts(ADMIN_CHANNEL)) == 2
    assert await env.tasks() == 1  # acted once


async def test_a_press_takes_away_its_own_button_only(env: Env) -> None:
    message = await env.draw(
        ADMIN, Action("Logs", "/help"), Action("Hourly", "/task add every 1h /status", "danger")
    )
    logs, hourly = _buttons(message)
    await env.press(ADMIN_CHANNEL, int(message["id"]), logs["custom_id"])
    edited = env.fake.message(int(message["id"]))
    assert edited is not None and edited["content"] == "Pick one\n*Logs — pressed by ann*"
    (left,) = _buttons(edited)  # the other button stays, as it was drawn
    assert (left["label"], left["style"], left["custom_id"]) == ("Hourly", 4, hourly["custom_id"])
    pressed = await env.press(ADMIN_CHANNEL, int(message["id"]), hourly["custom_id"])
    assert pressed.edits and await env.tasks() == 1  # the one left still acts
    edited = env.fake.message(int(message["id"]))
    assert edited is not None and edited["components"] == []
    assert edited["content"].endswith("*Logs — pressed by ann*\n*Hourly — pressed by ann*")


async def test_a_choice_pressed_takes_all_its_buttons_away(env: Env) -> None:
    message = await env.draw(
        ADMIN,
        Action("Yes", "/task add every 1h /status", "danger"),
        Action("No", "/help"),
        choice=True,
    )
    yes, no = _buttons(message)
    assert (await env.press(ADMIN_CHANNEL, int(message["id"]), yes["custom_id"])).edits
    edited = env.fake.message(int(message["id"]))
    assert edited is not None and edited["components"] == []
    assert edited["content"] == "Pick one\n*Yes — pressed by ann*"
    # a No pressed from a copy of the message still drawn somewhere acts not
    pressed = await env.press(ADMIN_CHANNEL, int(message["id"]), no["custom_id"])
    (note,) = pressed.followups
    assert note["content"].startswith("Already done") and await env.tasks() == 1


async def test_a_press_in_a_chat_without_rights_does_nothing(env: Env) -> None:
    message = await env.draw(OTHER, Action("Status", "/status"))
    (button,) = _buttons(message)
    pressed = await env.press(OTHER_CHANNEL, int(message["id"]), button["custom_id"])
    (note,) = pressed.followups
    assert note["flags"] == EPHEMERAL and "no command rights" in note["content"]
    assert not pressed.edits and env.texts(OTHER_CHANNEL) == ["Pick one"]
    assert _buttons(env.fake.message(int(message["id"])) or {"components": []})
    claimed = await env.orch.services.db.scalar(
        "SELECT count(*) FROM buttons WHERE pressed_at IS NOT NULL"
    )
    assert claimed == 0


async def test_a_press_after_the_chat_lost_its_rights_does_nothing(env: Env) -> None:
    await env.command(DM_CHANNEL, "chat", f"admin {OTHER}", guild=False)
    first = await env.draw(OTHER, Action("Hourly", "/task add every 1h /status"))
    second = await env.draw(OTHER, Action("Daily", "/task add every 1d /status"))
    (hourly,), (daily,) = _buttons(first), _buttons(second)
    assert (await env.press(OTHER_CHANNEL, int(first["id"]), hourly["custom_id"])).edits
    assert await env.tasks() == 1  # drawn and pressed while the chat had rights
    revoked = await env.command(DM_CHANNEL, "chat", f"revoke {OTHER}", guild=False)
    answer = env.fake.message(revoked.original or 0)
    assert answer is not None and "may no longer command" in answer["content"]
    pressed = await env.press(OTHER_CHANNEL, int(second["id"]), daily["custom_id"])
    (note,) = pressed.followups
    assert note["flags"] == EPHEMERAL and "no command rights" in note["content"]
    assert not pressed.edits and await env.tasks() == 1
    assert _buttons(env.fake.message(int(second["id"])) or {"components": []})


async def test_a_command_slower_than_the_ack_window_still_answers(
    settings: Settings, fake: FakeDiscord
) -> None:
    fake.ack_limit_s = 1.0  # Discord's 3 s, shortened: the rule, not the wait

    async def slow(ctx: CommandContext, cmd: ParsedCommand) -> str:
        """A command that ends after its interaction's window to be acknowledged."""
        await asyncio.sleep(fake.ack_limit_s * 2)
        return "Slow: finished"

    router = build_router()
    router.register(slow, "slow", usage="/slow", summary="outlasts the ack window")
    channel = _channel(fake)
    async with Orchestrator(_settings(settings), channels=[channel], router=router) as orch:
        env = Env(fake, channel, orch)
        asked = await env.command(ADMIN_CHANNEL, "slow")  # deferred at once, edited later
        assert [c["type"] for c in asked.callbacks] == [5]
        assert asked.edits and asked.edits[-1]["content"] == "Slow: finished"
        message = await env.draw(ADMIN, Action("Slow", "/slow"))
        pressed = await env.press(
            ADMIN_CHANNEL, int(message["id"]), _buttons(message)[0]["custom_id"]
        )
        assert [c["type"] for c in pressed.callbacks] == [6] and pressed.edits
        assert env.texts(ADMIN_CHANNEL)[-1] == "Slow: finished"
        assert fake.late_callbacks == []


async def test_a_press_in_a_thread_is_the_parent_chats(env: Env) -> None:
    root = await env.channel.send_text(ADMIN, "Run abc123 queued")
    message = await env.draw(ADMIN, Action("Status", "/status"))
    (button,) = _buttons(message)
    token = button["custom_id"]
    shown = await env.channel.send_message(
        ADMIN, "Also here", buttons=[Button("Status", token)], thread=root
    )
    assert root is not None and shown is not None
    pressed = await env.press(int(root), int(shown), token)  # pressed inside the thread
    edited = env.fake.message(int(shown))
    assert pressed.edits and edited is not None and edited["components"] == []
    assert edited["content"] == "Also here\n*Status — pressed by ann*"
    assert "Uptime:" in env.texts(ADMIN_CHANNEL)[-1]


# ---- threads ----------------------------------------------------------------------------


async def test_messages_under_a_root_go_to_its_thread_started_once(env: Env) -> None:
    root = await env.channel.send_text(ADMIN, "Run abc123 queued: gpt steps=60")
    assert root is not None
    first = await env.channel.send_message(ADMIN, "step 10/60", thread=root)
    await env.channel.send_message(ADMIN, "step 20/60", thread=root)
    thread = env.fake.threads[int(root)]
    assert thread["parent_id"] == str(ADMIN_CHANNEL)
    assert thread["name"] == "Run abc123 queued: gpt steps=60"
    assert [m.content for m in env.fake.sent[int(root)]] == ["step 10/60", "step 20/60"]
    assert env.texts(ADMIN_CHANNEL) == ["Run abc123 queued: gpt steps=60"]
    assert env.fake.count(THREADS) == 1
    # an edit of a message in the thread happens there
    assert first is not None
    assert await env.channel.edit_text(ADMIN, first, "step 30/60") == first
    assert [e.content for e in env.fake.edits[int(root)]] == ["step 30/60"]


async def test_after_a_restart_the_thread_is_found_again(
    settings: Settings, fake: FakeDiscord
) -> None:
    before = _channel(fake)
    async with Orchestrator(_settings(settings), channels=[before]):
        root = await before.send_text(ADMIN, "Run abc123 queued")
        assert root is not None
        await before.send_message(ADMIN, "step 1", thread=root)
    after = _channel(fake)
    async with Orchestrator(_settings(settings), channels=[after]):
        await after.send_message(ADMIN, "step 2", thread=root)
        await after.send_message(ADMIN, "step 3", thread=root)
    assert [m.content for m in fake.sent[int(root)]] == ["step 1", "step 2", "step 3"]
    # started once; the restarted channel knew it from the guild's active threads
    assert fake.count(THREADS, 201) == 1 and fake.count(THREADS) == 1


async def test_after_a_restart_an_archived_thread_is_found_again(
    settings: Settings, fake: FakeDiscord
) -> None:
    before = _channel(fake)
    async with Orchestrator(_settings(settings), channels=[before]):
        root = await before.send_text(ADMIN, "Run abc123 queued")
        assert root is not None
        await before.send_message(ADMIN, "step 1", thread=root)
    fake.archive(int(root))  # a quiet day: the new session is not told of the thread
    after = _channel(fake)
    async with Orchestrator(_settings(settings), channels=[after]):
        await after.send_message(ADMIN, "step 2", thread=root)
        await after.send_message(ADMIN, "step 3", thread=root)
    assert [m.content for m in fake.sent[int(root)]] == ["step 1", "step 2", "step 3"]
    # started once; the restarted channel heard "already exists" once and wrote there
    assert fake.count(THREADS, 201) == 1 and fake.count(THREADS, 400) == 1


async def test_a_threads_message_is_edited_there_after_a_restart(
    settings: Settings, fake: FakeDiscord
) -> None:
    before = _channel(fake)
    async with Orchestrator(_settings(settings), channels=[before]):
        root = await before.send_text(ADMIN, "Run abc123 queued")
        assert root is not None
        progress = await before.send_message(ADMIN, "step 1/9", thread=root)
        assert progress is not None
    after = _channel(fake)
    async with Orchestrator(_settings(settings), channels=[after]):
        assert await after.edit_text(ADMIN, progress, "step 5/9", thread=root) == progress
    assert [e.content for e in fake.edits[int(root)]] == ["step 5/9"]
    assert [m.content for m in fake.sent[ADMIN_CHANNEL]] == [
        "Run abc123 queued"
    ]  # nothing sent anew


async def test_in_a_dm_a_threads_messages_stay_in_the_dm(env: Env) -> None:
    dm = f"dc:{DM_CHANNEL}"
    root = await env.channel.send_text(dm, "Run abc123 queued")
    assert root is not None
    await env.channel.send_message(dm, "step 1", thread=root)
    await env.channel.send_message(dm, "step 2", thread=root)
    assert env.texts(DM_CHANNEL) == ["Run abc123 queued", "step 1", "step 2"]
    assert env.fake.count(THREADS) == 1  # tried once, then the DM itself


async def test_a_slash_command_in_a_thread_is_the_parent_chats_and_answered_there(
    env: Env,
) -> None:
    root = await env.channel.send_text(ADMIN, "Run abc123 queued")
    assert root is not None
    await env.channel.send_message(ADMIN, "step 1", thread=root)
    asked = await env.command(int(root), "status")  # typed inside the thread
    answer = env.fake.message(asked.original or 0)
    assert answer is not None and "Uptime:" in answer["content"]
    assert answer["channel_id"] == root


async def test_a_message_typed_in_a_thread_is_the_parent_chats_and_answered_there(
    env: Env,
) -> None:
    root = await env.channel.send_text(ADMIN, "Run abc123 queued")
    assert root is not None
    await env.channel.send_message(ADMIN, "step 1", thread=root)
    await env.fake.push_message(int(root), "/status")
    await env.fake.wait_sent(int(root), 2)
    assert "Uptime:" in env.texts(int(root))[1]  # an admin chat's command, answered there
    assert env.texts(ADMIN_CHANNEL) == ["Run abc123 queued"]  # nothing at the top level
    # free text addressed to the bot in the thread: the model's answer goes there too
    await env.fake.push_message(int(root), "how is it going?", mentions_bot=True)
    await env.fake.wait_sent(int(root), 3)
    assert env.texts(ADMIN_CHANNEL) == ["Run abc123 queued"]


async def test_a_button_under_an_answer_in_a_thread_answers_in_that_thread(env: Env) -> None:
    thread = await env.fake.add_thread(ADMIN_CHANNEL)
    # an answer given in the thread, offering an action (as a command typed there would)
    reply = Reply("Pick one", actions=(Action("Status", "/status"),))
    in_thread = dataclasses.replace(reply, thread=platform_thread(str(thread)))
    assert await env.orch.send(ADMIN, in_thread, None)
    (offered,) = await env.fake.wait_sent(thread, 1)
    message = env.fake.message(offered.id)
    assert message is not None
    await env.press(thread, offered.id, _buttons(message)[0]["custom_id"])
    (_, answer) = await env.fake.wait_sent(thread, 2)
    assert "Uptime:" in answer.content and env.texts(ADMIN_CHANNEL) == []


async def test_the_models_confirmation_asked_in_a_thread_is_drawn_there(
    settings: Settings, fake: FakeDiscord
) -> None:
    """Asked in a thread to delete a task, the model's unconfirmed call puts its Yes / No in
    that thread, beside its answer; pressed there, Yes deletes the task."""
    async with FakeAnthropic() as model:
        model_config = model_settings(_settings(settings), model)
        channel = _channel(fake)
        async with Orchestrator(model_config, channels=[channel]) as orch:
            env = Env(fake, channel, orch)
            added = fake.message(
                (await env.command(ADMIN_CHANNEL, "task", "add every 1h /status")).original or 0
            )
            assert added is not None
            task_id = added["content"].split()[1]
            model.add(
                Answer([ToolUse("tu_1", "delete_task", {"task_id": task_id, "confirmed": False})]),
                Answer("I put a button for it in the chat."),
            )
            thread = await fake.add_thread(ADMIN_CHANNEL)
            await fake.push_message(thread, "delete that task", mentions_bot=True)
            confirm, answer = await fake.wait_sent(thread, 2)
            assert confirm.content.startswith(f"Confirm: delete task {task_id}")
            assert answer.content == "I put a button for it in the chat."
            assert env.texts(ADMIN_CHANNEL) == []  # nothing at the top level
            message = fake.message(confirm.id)
            assert message is not None
            (yes,) = [b for b in _buttons(message) if b["label"].startswith("Yes")]
            await env.press(thread, confirm.id, yes["custom_id"])
            assert await env.tasks() == 0


async def test_a_thread_the_bot_was_not_told_of_is_still_its_channels(env: Env) -> None:
    thread = await env.fake.add_thread(ADMIN_CHANNEL, announce=False)
    await env.fake.push_message(thread, "/status")
    (answer,) = await env.fake.wait_sent(thread, 1)
    assert "Uptime:" in answer.content  # the admin channel's rights, answered in the thread
    await env.fake.push_message(thread, "/help")
    await env.fake.wait_sent(thread, 2)
    assert env.fake.count("GET /channels/{channel_id}") == 1  # looked up once
    rows = await env.orch.services.db.fetchall("SELECT id FROM chats")
    assert {r["id"] for r in rows} == {ADMIN}  # no chat of its own


async def test_a_thread_of_a_chat_without_rights_gets_none(env: Env) -> None:
    for announce in (True, False):
        thread = await env.fake.add_thread(OTHER_CHANNEL, announce=announce)
        await env.fake.push_message(thread, "/task add every 1h /status")
        await env.fake.push_message(thread, "/status")
        asked = await env.command(thread, "status")  # a slash command there: removed
        assert asked.deleted and not asked.edits
        assert env.fake.sent[thread] == []
    assert env.fake.sent[OTHER_CHANNEL] == [] and await env.tasks() == 0
    rows = await env.orch.services.db.fetchall("SELECT id FROM chats")
    assert {r["id"] for r in rows} == {OTHER}  # the channel's, not a new chat per thread


# ---- hostile input ----------------------------------------------------------------------


def _spoiled(fake: FakeDiscord) -> list[Json]:
    def command(data: Json) -> Json:
        return fake.interaction_payload(2, ADMIN_CHANNEL, data)

    no_token = command({"name": "status", "type": 1})
    del no_token["token"]
    no_channel = command({"name": "status", "type": 1})
    del no_channel["channel"], no_channel["channel_id"]
    return [
        no_token,
        no_channel,
        command({"name": "Not A Name!", "type": 1}),
        command({"type": 1}),
        command({"name": "run", "options": [{"name": "args", "type": 3, "value": 7}]}),
        fake.interaction_payload(3, ADMIN_CHANNEL, {"component_type": 2}),
        {**command({"name": "status"}), "data": "not an object"},
        {"id": "x", "type": "y"},
    ]


async def test_a_malformed_interaction_is_skipped_and_the_gateway_reads_on(env: Env) -> None:
    spoiled = _spoiled(env.fake)
    for payload in spoiled:
        await env.fake.push_interaction(payload)
    asked = await env.command(ADMIN_CHANNEL, "status")  # read after every spoiled one
    answer = env.fake.message(asked.original or 0)
    assert answer is not None and "Uptime:" in answer["content"]
    assert env.channel.skipped == len(spoiled)
    assert env.channel.is_connected and env.fake.sent[ADMIN_CHANNEL] == []


ODD: list[Any] = [None, 0, -1, 2**70, 1.5, True, "", "x", "\udcff", "\x00", "é" * 5000, [], {}]


async def test_seeded_random_interactions_never_stop_the_gateway(env: Env) -> None:
    rng = random.Random(416)
    message = await env.draw(ADMIN, Action("Hourly", "/task add every 1h /status"))
    keys = ["id", "type", "token", "channel", "channel_id", "member", "data", "message"]
    inner = ["name", "options", "custom_id", "component_type"]
    for _ in range(40):
        if rng.random() < 0.5:
            data: Json = {"name": "status", "type": 1}
            payload = env.fake.interaction_payload(2, ADMIN_CHANNEL, data)
        else:
            data = {"custom_id": "nosuchtoken", "component_type": 2}
            payload = env.fake.interaction_payload(3, ADMIN_CHANNEL, data)
            payload["message"] = env.fake.message(int(message["id"]))
        for key in rng.sample(keys, rng.randrange(1, 3)):
            payload[key] = rng.choice(ODD)
        if isinstance(payload.get("data"), dict):
            payload["data"][rng.choice(inner)] = rng.choice(ODD)
        await env.fake.push_interaction(payload)
    asked = await env.command(ADMIN_CHANNEL, "help", "task \udcff\x00")  # odd args too
    answer = env.fake.message(asked.original or 0)
    assert answer is not None and answer["content"]
    (button,) = _buttons(message)
    assert (await env.press(ADMIN_CHANNEL, int(message["id"]), button["custom_id"])).edits
    assert await env.tasks() == 1 and env.channel.is_connected  # nothing else acted


async def test_an_interaction_delivered_twice_is_answered_once(env: Env) -> None:
    payload = env.fake.interaction_payload(2, ADMIN_CHANNEL, {"name": "status", "type": 1})
    iid = await env.fake.push_interaction(payload)
    await env.fake.push_interaction(payload)
    asked = await env.final(iid, lambda i: bool(i.edits))
    await env.command(ADMIN_CHANNEL, "help")  # handled after the redelivery was dropped
    assert len(asked.callbacks) == 1 and len(asked.edits) == 1


# ---- a run in its thread ------------------------------------------------------------------


async def test_a_runs_messages_go_to_the_thread_of_its_launch(
    settings: Settings, fake: FakeDiscord
) -> None:
    run_settings = _settings(settings).model_copy(update={"monitor_interval_s": 0.1})
    channel = _channel(fake)
    runner = ProcessRunner(run_settings.runs_dir)
    async with Orchestrator(run_settings, channels=[channel], runner=runner) as orch:
        env = Env(fake, channel, orch)
        asked = await env.command(ADMIN_CHANNEL, "run", "train classifier steps=30 gpus=0")
        launch = fake.message(asked.original or 0)
        assert launch is not None
        found = RUN_ID.search(launch["content"])
        assert found, launch["content"]
        run_id, root = found.group(1), int(launch["id"])
        assert "Stop" in [b["label"] for b in _buttons(launch)]
        done = f"Run {run_id} (classifier) succeeded"

        def reported() -> bool:  # the report, then its plot
            thread = fake.sent[root]
            return any(done in m.content for m in thread) and any(m.attachments for m in thread)

        await fake.wait_for(reported, timeout=240)  # a loaded machine: minutes, not seconds
        assert fake.threads[root]["parent_id"] == str(ADMIN_CHANNEL)
        assert fake.threads[root]["name"].startswith(f"Run {run_id}")
        report = next(m for m in fake.sent[root] if done in m.content)
        assert report.components  # what the report offers (logs, retry) as buttons
        assert not any(run_id in t for t in env.texts(ADMIN_CHANNEL))  # nothing at top level
        # the report's Logs button, pressed in the thread, is the channel's command
        report_json = fake.message(report.id)
        assert report_json is not None
        logs = next(b for b in _buttons(report_json) if b["label"] == "Logs")
        before = sum(len(v) for v in fake.sent.values())
        pressed = await env.press(root, report.id, logs["custom_id"])
        assert pressed.edits and not pressed.followups
        edited = fake.message(report.id)
        assert edited is not None and edited["content"].endswith("*Logs — pressed by ann*")
        left = [b["label"] for b in _buttons(edited)]
        assert "Logs" not in left and left == [b["label"] for b in _buttons(report_json)][1:]
        assert sum(len(v) for v in fake.sent.values()) == before + 1  # the logs, once


async def test_a_slash_stop_is_answered_in_the_runs_thread(
    settings: Settings, fake: FakeDiscord
) -> None:
    run_settings = _settings(settings).model_copy(
        update={"monitor_interval_s": 0.1, "stop_grace_s": 30.0}
    )
    channel = _channel(fake)
    runner = ProcessRunner(run_settings.runs_dir)
    async with Orchestrator(run_settings, channels=[channel], runner=runner) as orch:
        env = Env(fake, channel, orch)
        launched = await env.command(
            ADMIN_CHANNEL, "run", "train gpt steps=500 gpus=0 sleep_per_step=0.2"
        )
        launch = fake.message(launched.original or 0)
        assert launch is not None
        found = RUN_ID.search(launch["content"])
        assert found, launch["content"]
        run_id, root = found.group(1), int(launch["id"])
        await wait_until(lambda: step_of(orch.services.runs.repo, run_id), 1, timeout=240)
        stop = await env.command(ADMIN_CHANNEL, "run", f"stop {run_id}")  # at the top level
        pointer = fake.message(stop.original or 0)
        assert pointer is not None and pointer["content"] == f"Answered in <#{root}>"
        assert any(f"Run {run_id}: stopping" in m.content for m in fake.sent[root])
        done = f"Run {run_id} (gpt) cancelled"
        await fake.wait_for(lambda: any(done in m.content for m in fake.sent[root]), timeout=240)
        assert not any(run_id in t for t in env.texts(ADMIN_CHANNEL))
