"""Telegram's inline buttons, callback queries and reply threads, at the channel's edge: the
real python-telegram-bot client against the fake Bot API server, presses handed to a
recording inbox (what the orchestrator decides about a press is tested end to end in
test_telegram_presses.py)."""

from __future__ import annotations

import json
import random
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from assistant.channels.base import Button, MenuEntry, Press, PressResult
from assistant.channels.telegram import MENU_KEY, PRESS_FAILED, TelegramChannel
from assistant.config import Settings
from storage.db import Database
from storage.kv import KeyValue
from tests.fakes.telegram_server import ANN, FakeTelegram
from tests.support.recording import RecordingInbox

CHAT = 1001
GROUP = -3003
STOP = Button("Stop", "tok_stop-1", "danger")
LOGS = Button("Logs", "tok_logs")


@dataclass
class Edge:
    channel: TelegramChannel
    fake: FakeTelegram
    inbox: RecordingInbox
    kv: KeyValue


@pytest.fixture
async def edge(settings: Settings) -> AsyncIterator[Edge]:
    fake = FakeTelegram()
    await fake.start()
    db = await Database.open(settings.db_path)
    kv = KeyValue(db)
    channel = TelegramChannel(fake.token, api_url=fake.base_url, kv=kv, poll_timeout=1.0)
    channel.backoff_s = 0.05
    inbox = RecordingInbox()
    await channel.start(inbox)
    try:
        yield Edge(channel, fake, inbox, kv)
    finally:
        await channel.aclose()
        await db.aclose()
        await fake.aclose()


def png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )


async def sent_with_buttons(edge: Edge, chat: int = CHAT) -> int:
    message_id = await edge.channel.send_message(
        f"tg:{chat}", "run 3r6wfv is **training**", buttons=[STOP, LOGS]
    )
    assert message_id is not None
    return int(message_id)


# ---- buttons drawn ------------------------------------------------------------------------


async def test_buttons_are_drawn_as_an_inline_keyboard_whose_data_is_the_token(
    edge: Edge,
) -> None:
    more = [Button(f"B{i}", f"t{i}") for i in range(3)]
    message_id = await edge.channel.send_message(f"tg:{CHAT}", "pick", buttons=[STOP, *more])
    (sent,) = edge.fake.sent[CHAT]
    assert message_id == str(sent.message_id) and sent.text == "pick"
    assert sent.buttons == [
        [("Stop", "tok_stop-1"), ("B0", "t0"), ("B1", "t1")],
        [("B2", "t2")],
    ]
    assert sent.markup is not None
    styles = [b.get("style") for row in sent.markup["inline_keyboard"] for b in row]
    assert styles == ["danger", None, None, None]
    assert edge.channel.supports_buttons and edge.channel.supports_threads


async def test_a_long_message_carries_its_buttons_on_its_last_piece_and_returns_the_first(
    edge: Edge,
) -> None:
    text = "\n".join(f"line {i}: " + "x" * 60 for i in range(150))
    message_id = await edge.channel.send_message(f"tg:{CHAT}", text, buttons=[STOP])
    first, *middle, last = edge.fake.sent[CHAT]
    assert message_id == str(first.message_id)
    assert last.buttons == [[("Stop", "tok_stop-1")]]
    assert first.buttons == [] and all(piece.buttons == [] for piece in middle)


async def test_html_refused_goes_again_plain_with_its_buttons(edge: Edge) -> None:
    edge.fake.fail_next("sendMessage", 400, description="Bad Request: can't parse entities: x")
    await edge.channel.send_message(f"tg:{CHAT}", "**bold**", buttons=[LOGS])
    (sent,) = edge.fake.sent[CHAT]
    assert sent.parse_mode is None and sent.buttons == [[("Logs", "tok_logs")]]


async def test_without_buttons_or_thread_send_message_is_plain_text(edge: Edge) -> None:
    message_id = await edge.channel.send_message(f"tg:{CHAT}", "hello")
    (sent,) = edge.fake.sent[CHAT]
    assert message_id == str(sent.message_id)
    assert sent.buttons == [] and sent.reply_to is None
    (call,) = edge.fake.calls_of("sendMessage")
    assert "reply_markup" not in call.params and "reply_parameters" not in call.params


# ---- presses --------------------------------------------------------------------------------


async def test_polling_asks_for_button_presses(edge: Edge) -> None:
    (poll, *_) = await edge.fake.wait_calls("getUpdates", 1)
    assert set(json.loads(poll.params["allowed_updates"])) == {"message", "callback_query"}


async def test_a_press_goes_to_the_inbox_is_answered_and_its_button_taken_off(
    edge: Edge,
) -> None:
    message_id = await sent_with_buttons(edge)
    query = edge.fake.push_press(CHAT, message_id, "Stop")
    answer = await edge.fake.wait_answered(query)
    assert answer.text == "Stop: done" and not answer.show_alert
    (press,) = edge.inbox.presses
    assert press == Press(
        chat_id=f"tg:{CHAT}",
        sender=ANN["username"],
        token="tok_stop-1",
        platform_id=query,
        message_id=str(message_id),
        chat_title="Ann",
    )
    (edited,) = await edge.fake.wait_calls("editMessageReplyMarkup", 1)
    assert edited.params["message_id"] == str(message_id)
    assert edge.fake.buttons(CHAT, message_id) == [[("Logs", "tok_logs")]]  # the rest stay
    await edge.fake.wait_answered(edge.fake.push_press(CHAT, message_id, "Logs"))
    await edge.fake.wait_calls("editMessageReplyMarkup", 2)
    assert edge.fake.buttons(CHAT, message_id) == []  # the last one: no keyboard left
    assert edge.fake.sent[CHAT][0].text == "run 3r6wfv is training"  # the text stays


async def test_a_press_that_did_not_act_is_answered_and_leaves_the_keyboard(edge: Edge) -> None:
    message_id = await sent_with_buttons(edge)
    edge.inbox.result = PressResult(False, "Not allowed in this chat")
    stranger = {"id": 99, "is_bot": False, "first_name": "Eve", "last_name": "X"}
    query = edge.fake.push_press(CHAT, message_id, "Logs", from_user=stranger)
    answer = await edge.fake.wait_answered(query)
    assert answer.text == "Not allowed in this chat"
    assert edge.inbox.presses[0].sender == "Eve X"
    await edge.fake.wait_confirmed(edge.fake.query_updates[query])  # handled to the end
    assert edge.fake.calls_of("editMessageReplyMarkup") == []
    assert edge.fake.buttons(CHAT, message_id) == [[("Stop", "tok_stop-1"), ("Logs", "tok_logs")]]


async def test_a_press_that_used_a_whole_choice_takes_every_button_off(edge: Edge) -> None:
    message_id = await sent_with_buttons(edge)
    edge.inbox.result = PressResult(True, "Stop: done", spent_all=True)
    await edge.fake.wait_answered(edge.fake.push_press(CHAT, message_id, "Stop"))
    await edge.fake.wait_calls("editMessageReplyMarkup", 1)
    assert edge.fake.buttons(CHAT, message_id) == []
    # past 48 hours too: the keyboard is unknown, but all of it goes
    other = await sent_with_buttons(edge)
    query = edge.fake.push_press(CHAT, other, "Logs", inaccessible=True)
    await edge.fake.wait_answered(query)
    await edge.fake.wait_calls("editMessageReplyMarkup", 2)
    assert edge.fake.buttons(CHAT, other) == []


async def test_a_press_on_a_message_too_old_to_see_acts_and_leaves_the_keyboard(
    edge: Edge,
) -> None:
    """Past 48 hours a press carries only the message's chat and id, not its keyboard: the
    press is handed on, and no keyboard is guessed at (the other buttons stay)."""
    message_id = await sent_with_buttons(edge)
    query = edge.fake.push_press(CHAT, message_id, "Stop", inaccessible=True)
    answer = await edge.fake.wait_answered(query)
    await edge.fake.wait_confirmed(edge.fake.query_updates[query])
    assert answer.text == "Stop: done"
    (press,) = edge.inbox.presses
    assert (press.token, press.message_id) == ("tok_stop-1", str(message_id))
    assert edge.fake.calls_of("editMessageReplyMarkup") == []


async def test_a_press_in_a_group_names_the_group_and_the_presser(edge: Edge) -> None:
    edge.fake.push_message(GROUP, "hello", chat_type="supergroup", title="ML team")
    message_id = await sent_with_buttons(edge, GROUP)
    query = edge.fake.push_press(GROUP, message_id, "Logs")
    await edge.fake.wait_answered(query)
    press = edge.inbox.presses[0]
    assert (press.chat_id, press.chat_title, press.token) == (f"tg:{GROUP}", "ML team", "tok_logs")


async def test_a_long_note_is_cut_to_what_telegram_shows(edge: Edge) -> None:
    message_id = await sent_with_buttons(edge)
    edge.inbox.result = PressResult(False, "n" * 500)
    answer = await edge.fake.wait_answered(edge.fake.push_press(CHAT, message_id, "Stop"))
    assert len(answer.text) == 200 and answer.text.endswith("…")


async def test_an_inbox_that_fails_gets_the_press_answered_and_polling_goes_on(
    edge: Edge,
) -> None:
    message_id = await sent_with_buttons(edge)
    edge.inbox.fail = True
    answer = await edge.fake.wait_answered(edge.fake.push_press(CHAT, message_id, "Stop"))
    assert answer.text == PRESS_FAILED and edge.channel.skipped == 1
    assert edge.fake.calls_of("editMessageReplyMarkup") == []
    update = edge.fake.push_message(CHAT, "still there?")
    await edge.fake.wait_confirmed(update)
    assert [m.text for m in edge.inbox.messages] == ["still there?"]


async def test_forged_callback_data_still_reaches_the_inbox_which_decides(edge: Edge) -> None:
    """Telegram's clients can send any callback data: the channel passes it on as the token
    (made valid text), and the inbox, not the channel, refuses what it never drew."""
    message_id = await sent_with_buttons(edge)
    edge.inbox.result = PressResult(False, "This button has expired")
    query = edge.fake.push_press(CHAT, message_id, data="../../etc \udcff")
    answer = await edge.fake.wait_answered(query)
    assert answer.text == "This button has expired"
    assert edge.inbox.presses[0].token == "../../etc \ufffd"


async def test_a_query_that_is_no_button_of_ours_is_answered_and_not_pressed(
    edge: Edge,
) -> None:
    message_id = await sent_with_buttons(edge)
    query = edge.fake.push_press(CHAT, message_id)  # no data: a game's button
    answer = await edge.fake.wait_answered(query)
    assert answer.text == "This button is not one of the assistant's"
    assert edge.inbox.presses == []


async def test_a_malformed_callback_query_is_skipped_and_polling_goes_on(edge: Edge) -> None:
    message_id = await sent_with_buttons(edge)
    edge.fake.push_update({"callback_query": {"id": "1"}})  # no from, no chat_instance
    edge.fake.push_update({"callback_query": "pressed"})
    query = edge.fake.push_press(CHAT, message_id, "Logs")
    await edge.fake.wait_answered(query)
    update = edge.fake.push_message(CHAT, "and a message")
    await edge.fake.wait_confirmed(update)
    assert edge.channel.skipped == 2 and edge.channel.is_connected
    assert [p.token for p in edge.inbox.presses] == ["tok_logs"]
    assert [m.text for m in edge.inbox.messages] == ["and a message"]


async def test_a_query_too_old_to_answer_is_logged_and_polling_goes_on(
    edge: Edge, caplog: pytest.LogCaptureFixture
) -> None:
    message_id = await sent_with_buttons(edge)
    edge.fake.fail_next(
        "answerCallbackQuery",
        400,
        description="Bad Request: query is too old and response timeout expired",
    )
    edge.fake.push_press(CHAT, message_id, "Stop")
    await edge.fake.wait_calls("answerCallbackQuery", 1)
    update = edge.fake.push_message(CHAT, "next")
    await edge.fake.wait_confirmed(update)
    assert [m.text for m in edge.inbox.messages] == ["next"]
    assert "a button press was not answered: Query is too old" in caplog.text
    # the press itself acted, so its button is gone all the same
    assert edge.fake.buttons(CHAT, message_id) == [[("Logs", "tok_logs")]]


async def test_a_button_already_gone_is_no_error(edge: Edge) -> None:
    message_id = await sent_with_buttons(edge)
    first = edge.fake.push_press(CHAT, message_id, "Stop")
    await edge.fake.wait_answered(first)
    await edge.fake.wait_calls("editMessageReplyMarkup", 1)
    # a second press that was in flight before the keyboard went (pressed twice quickly)
    second = edge.fake.push_press(CHAT, message_id, data="tok_stop-1")
    await edge.fake.wait_answered(second)
    await edge.fake.wait_calls("editMessageReplyMarkup", 2)
    update = edge.fake.push_message(CHAT, "after")
    await edge.fake.wait_confirmed(update)
    assert edge.channel.skipped == 0 and len(edge.inbox.presses) == 2


# ---- threads ----------------------------------------------------------------------------


async def test_a_thread_is_a_reply_to_its_first_message(edge: Edge, tmp_path: Path) -> None:
    root = await edge.channel.send_message(f"tg:{CHAT}", "run 3r6wfv launched")
    assert root is not None
    await edge.channel.send_message(f"tg:{CHAT}", "step 10/100", thread=root, buttons=[STOP])
    plot = tmp_path / "loss.png"
    plot.write_bytes(png())
    await edge.channel.send_image(f"tg:{CHAT}", plot, "loss", thread=root)
    await edge.channel.send_image(f"tg:{CHAT}", plot, "c" * 1500, thread=root)
    launch, progress, long_caption = edge.fake.sent[CHAT]
    assert launch.reply_to is None
    assert progress.reply_to == int(root) and progress.buttons == [[("Stop", "tok_stop-1")]]
    assert long_caption.reply_to == int(root)  # a caption too long follows in the thread
    assert [p.reply_to for p in edge.fake.photos[CHAT]] == [int(root), int(root)]


async def test_an_edit_that_cannot_be_made_is_sent_anew_in_its_thread(edge: Edge) -> None:
    root = await edge.channel.send_message(f"tg:{CHAT}", "run 3r6wfv launched")
    assert root is not None
    progress = await edge.channel.send_message(f"tg:{CHAT}", "step 1/9", thread=root)
    assert progress is not None
    assert await edge.channel.edit_text(f"tg:{CHAT}", progress, "step 5/9", thread=root)
    again = await edge.channel.edit_text(f"tg:{CHAT}", "999999", "step 9/9", thread=root)
    assert [e.text for e in edge.fake.edits[CHAT]] == ["step 5/9"]
    *_, anew = edge.fake.sent[CHAT]
    assert again == str(anew.message_id) and anew.text == "step 9/9"
    assert anew.reply_to == int(root)


async def test_a_thread_whose_first_message_is_gone_still_gets_the_message(edge: Edge) -> None:
    await edge.channel.send_message(f"tg:{CHAT}", "the report", thread="424242")
    (sent,) = edge.fake.sent[CHAT]
    assert sent.text == "the report" and sent.reply_to is None
    (call,) = edge.fake.calls_of("sendMessage")
    assert '"allow_sending_without_reply": true' in call.params["reply_parameters"]


async def test_a_thread_id_that_is_no_message_id_is_ignored(edge: Edge) -> None:
    await edge.channel.send_message(f"tg:{CHAT}", "hello", thread="run:abc")
    (sent,) = edge.fake.sent[CHAT]
    assert sent.text == "hello" and sent.reply_to is None


# ---- the command menu ---------------------------------------------------------------------

MENU = [MenuEntry("help", "every command"), MenuEntry("status", "what runs")]


def menu_of(fake: FakeTelegram, chat: int | None) -> list[str] | None:
    scope = {"type": "default"} if chat is None else {"type": "chat", "chat_id": chat}
    menu = fake.menus.get(json.dumps(scope, sort_keys=True))
    return None if menu is None else [c["command"] for c in menu]


async def test_a_chat_no_longer_admin_loses_its_full_menu(edge: Edge) -> None:
    await edge.channel.set_menu([f"tg:{CHAT}", f"tg:{GROUP}", "sl:C1", "tg:@news"], MENU)
    assert menu_of(edge.fake, None) == ["help"]
    assert menu_of(edge.fake, CHAT) == menu_of(edge.fake, GROUP) == ["help", "status"]
    assert await edge.kv.get(MENU_KEY) == f"{GROUP},{CHAT}"
    await edge.channel.set_menu([f"tg:{CHAT}"], MENU)  # the group's rights were revoked
    assert menu_of(edge.fake, GROUP) is None  # deleted: it falls back to the default, /help
    assert menu_of(edge.fake, CHAT) == ["help", "status"]
    assert await edge.kv.get(MENU_KEY) == str(CHAT)


async def test_a_menu_one_chat_refuses_does_not_keep_it_from_the_others(edge: Edge) -> None:
    edge.fake.fail_next("setMyCommands", 400)  # the default scope's
    edge.fake.fail_next("deleteMyCommands", 400)
    await edge.kv.set(MENU_KEY, "555")  # a chat that once had the full menu
    await edge.channel.set_menu([f"tg:{CHAT}"], MENU)
    assert menu_of(edge.fake, None) is None and menu_of(edge.fake, CHAT) == ["help", "status"]
    assert await edge.kv.get(MENU_KEY) == f"555,{CHAT}"  # the deletion is tried again later
    await edge.channel.set_menu([f"tg:{CHAT}"], MENU)
    assert await edge.kv.get(MENU_KEY) == str(CHAT) and menu_of(edge.fake, None) == ["help"]


async def test_the_fake_refuses_what_telegram_refuses_in_a_menu(edge: Edge) -> None:
    """So the menu test against the registry would fail on a name Telegram cannot list."""
    await edge.channel.set_menu([f"tg:{CHAT}"], [MenuEntry("Run-Bench", "x")])
    assert menu_of(edge.fake, CHAT) is None


ODD: list[Any] = [None, 0, -1, 2**70, 1.5, True, "", "x", "\udcff", "\x00", "é" * 5_000, [], {}]


async def test_seeded_random_callback_queries_never_stop_polling(edge: Edge) -> None:
    """Presses with fields missing or of the wrong type: each is handed on with its text
    made valid, or skipped and counted; polling goes on and a later press still works."""
    message_id = await sent_with_buttons(edge)
    rng = random.Random(416)
    keys = ["id", "from", "message", "chat_instance", "data"]
    for n in range(40):
        query: dict[str, Any] = {
            "id": f"q{n}",
            "from": dict(ANN),
            "message": {**edge.fake.messages(CHAT)[message_id]},
            "chat_instance": "-77",
            "data": "tok_logs",
        }
        for key in rng.sample(keys, rng.randrange(1, 3)):
            if rng.random() < 0.3:
                query.pop(key)
            else:
                query[key] = rng.choice(ODD)
        edge.fake.push_update({"callback_query": query})
    query = edge.fake.push_press(CHAT, message_id, "Stop")
    answer = await edge.fake.wait_answered(query)
    assert answer.text == "Stop: done" and edge.channel.is_connected
    assert edge.channel.skipped > 0 and len(edge.inbox.presses) > 5, edge.channel.skipped
    for press in edge.inbox.presses:
        assert "\x00" not in press.token and "\udcff" not in press.token
        assert press.chat_id == f"tg:{CHAT}" and press.message_id == str(message_id)
