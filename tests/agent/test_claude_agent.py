"""The Claude agent end to end: real SDK, fake Messages API server, real orchestrator."""

from __future__ import annotations

import itertools
import logging
import re
from typing import Any

import anthropic
import pytest

from assistant.agent_tools import TOOLS
from assistant.claude_agent import ClaudeAgent, conversation
from assistant.config import Settings
from assistant.observability import EventLog
from assistant.redaction import Redactor
from assistant.reply import Reply
from commands.usage import usage_line
from storage.db import Database
from storage.ids import encode
from storage.messages import MessageRepo, StoredMessage
from storage.usage import ModelCall, UsageRepo
from tests.fakes.anthropic_server import Failure, FakeAnthropic, Text, ToolUse, Usage
from tests.fakes.anthropic_server import Reply as Answer
from tests.support.model_service import ADMIN, API_KEY, MODEL, Service, model_settings, open_service


def _tool_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    last = body["messages"][-1]
    assert last["role"] == "user" and isinstance(last["content"], list)
    return list(last["content"])


def _text_chars(body: dict[str, Any]) -> int:
    total = 0
    for message in body["messages"]:
        content = message["content"]
        total += len(content) if isinstance(content, str) else 0
    return total


async def test_two_tool_calls_run_in_order_and_come_back_in_one_message(
    service: Service, fake: FakeAnthropic
) -> None:
    fake.add(
        Answer(
            [Text("Checking."), ToolUse("tu_1", "list_runs", {}), ToolUse("tu_2", "status", {})]
        ),
        Answer("No runs, and the queue is idle."),
    )
    assert await service.say("what is running?") == ["No runs, and the queue is idle."]

    first, second = (r.body for r in fake.requests)
    assert fake.requests[0].streamed and first["model"] == MODEL
    assert first["messages"] == [{"role": "user", "content": "what is running?"}]
    assert "phone" in first["system"][0]["text"]
    assert first["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert [t["name"] for t in first["tools"]] == list(TOOLS)
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert [b["type"] for b in second["messages"][1]["content"]] == ["text", "tool_use", "tool_use"]
    results = _tool_results(second)
    assert [r["tool_use_id"] for r in results] == ["tu_1", "tu_2"]
    assert "No runs yet" in results[0]["content"] and "Uptime:" in results[1]["content"]
    assert not any(r.get("is_error") for r in results)

    batch = (await service.rows("SELECT id FROM event_log WHERE source = 'message_batch'"))[0]
    calls = await service.rows(
        "SELECT id, triggered_by, target, content, ok FROM action_log"
        " WHERE action_type = 'model_call' ORDER BY id"
    )
    assert [(c["triggered_by"], c["target"], c["ok"]) for c in calls] == [
        (batch["id"], MODEL, 1)
    ] * 2
    assert '"stop_reason":"tool_use"' in calls[0]["content"]
    tools = await service.rows(
        "SELECT tool_name, action_id, output, ok FROM tool_call_log ORDER BY id"
    )
    ours = [t for t in tools if t["tool_name"] in ("list_runs", "status")]
    assert [(t["tool_name"], t["action_id"], t["ok"]) for t in ours] == [
        ("list_runs", calls[0]["id"], 1),
        ("status", calls[0]["id"], 1),
    ]
    assert '"command":"/runs"' in ours[0]["output"]

    root = (await service.rows("SELECT id FROM event_log WHERE source = 'telegram'"))[0]
    (tree,) = await service.say(f"/debug event {encode(root['id'])}")
    order = [
        "action message_stored",
        "event message_batch",
        f"action model_call → {MODEL}",
        "tool list_runs",
        "tool status",
        "action message_sent",
    ]
    positions = [tree.index(step) for step in order]
    assert positions == sorted(positions), tree
    assert tree.count("action model_call") == 2
    (why,) = await service.say("/debug why")
    assert why.startswith("Why message_sent (ok)")
    assert why.index("event telegram") < why.index("event message_batch")


async def test_an_overloaded_api_is_retried_and_the_answer_arrives(
    service: Service, fake: FakeAnthropic
) -> None:
    fake.add(Failure(529, retry_after_ms=5), Answer("Here it is."))
    assert await service.say("hello") == ["Here it is."]
    assert len(fake.requests) == 2
    calls = await service.rows("SELECT ok FROM action_log WHERE action_type = 'model_call'")
    assert calls == [{"ok": 1}]


async def test_a_persistent_failure_is_a_friendly_reply_and_failed_actions(
    service: Service, fake: FakeAnthropic
) -> None:
    fake.add(*[Failure(500, retry_after_ms=5)] * 3)
    (reply,) = await service.say("hello")
    assert reply == (
        "Sorry, I could not answer that: the Anthropic API failed (500 api_error: Internal"
        " server error), still after 2 retries. /debug why shows what happened."
    )
    assert len(fake.requests) == 3  # the first try and the SDK's two retries
    actions = await service.rows(
        "SELECT action_type, ok, error FROM action_log"
        " WHERE action_type IN ('model_call', 'agent_reply') ORDER BY id"
    )
    assert [(a["action_type"], a["ok"]) for a in actions] == [("agent_reply", 0), ("model_call", 0)]
    assert all("500 api_error" in a["error"] for a in actions)
    assert await service.rows("SELECT * FROM model_usage") == []


async def test_a_refused_key_is_not_retried(service: Service, fake: FakeAnthropic) -> None:
    fake.add(Failure(401))
    (reply,) = await service.say("hello")
    assert "refused the key (401 authentication_error" in reply and "ANTHROPIC_API_KEY" in reply
    assert len(fake.requests) == 1


async def test_an_error_in_the_middle_of_a_stream_is_reported(
    service: Service, fake: FakeAnthropic
) -> None:
    fake.add(Failure(529, in_stream=True))
    (reply,) = await service.say("hello")
    assert "failed mid-answer (overloaded_error: Overloaded)" in reply


async def test_the_daily_budget_stops_model_calls(settings: Settings, fake: FakeAnthropic) -> None:
    async with open_service(model_settings(settings, fake, daily_budget_usd=0.05), fake) as svc:
        usage = UsageRepo(svc.orch.services.db)
        await usage.record(ModelCall(MODEL, 1000, 1000, 0, 0, cost_usd=0.06, chat_id=ADMIN))
        (reply,) = await svc.say("how is the run?")
        (report,) = await svc.say("/usage")
    assert reply.startswith("Today's model budget is spent: $0.06 of $0.05")
    assert "/status" in reply and "/task" in reply
    assert fake.requests == []
    assert "Budget: $0.0600 of $0.0500 a day, spent" in report


async def test_a_scheduled_prompt_runs_in_its_own_context(
    service: Service, fake: FakeAnthropic
) -> None:
    fake.add(Answer("Hi Ann."))
    await service.say("my secret plan is to train gpt tonight")
    (added,) = await service.say('/task add every 1h "summarize the runs"')
    match = re.search(r"Task (\w+) scheduled", added)
    assert match is not None, added
    fake.add(Answer("Nothing is running."))
    await service.say(f"/task run {match.group(1)}")
    await service.channel.wait_for("Nothing is running.", timeout=10)
    body = fake.requests[-1].body
    assert body["messages"] == [{"role": "user", "content": "summarize the runs"}]
    calls = await service.rows(
        "SELECT e.source FROM action_log a JOIN event_log e ON e.id = a.triggered_by"
        " WHERE a.action_type = 'model_call' ORDER BY a.id"
    )
    assert [c["source"] for c in calls] == ["message_batch", "scheduled_task"]


async def test_history_is_trimmed_to_the_budget_from_the_oldest(
    settings: Settings, fake: FakeAnthropic
) -> None:
    async with open_service(model_settings(settings, fake, history_tokens=500), fake) as svc:
        fake.add(Answer("ok"))
        await svc.say("the very first message")
        messages = svc.orch.messages
        last = 0
        for i in range(30):
            seq = await messages.store(ADMIN, "ann", f"{i:02d} " + "x" * 150, from_me=i % 2 == 1)
            last = seq or last
        await messages.advance_cursor(ADMIN, last)
        fake.add(Answer("fine"))
        assert await svc.say("the newest question") == ["fine"]
    body = fake.requests[-1].body
    roles = [m["role"] for m in body["messages"]]
    assert roles[0] == "user" and all(a != b for a, b in itertools.pairwise(roles))
    assert _text_chars(body) <= 500 * 4
    assert body["messages"][-1]["content"].endswith("the newest question")
    sent = str(body["messages"])
    assert "the very first message" not in sent and "29 xxx" in sent and "00 xxx" not in sent


def _stored(seq: int, text: str, *, me: bool = False, sender: str = "ann") -> StoredMessage:
    return StoredMessage(seq, ADMIN, "assistant" if me else sender, text, "", me, None)


def test_conversation_orders_merges_and_cuts() -> None:
    history = [
        _stored(1, "a"),
        _stored(2, "b"),  # the batch
        _stored(3, "reply to a", me=True),  # stored after b arrived
        _stored(4, "too new"),  # for the next batch
    ]
    turns = conversation(history, [history[1]], 10_000)
    assert [(t.role, t.text) for t in turns] == [
        ("user", "a"),
        ("assistant", "reply to a"),
        ("user", "b"),
    ]
    opening = [_stored(1, "hello", me=True), _stored(2, "x"), _stored(3, "y")]
    assert [(t.role, t.text) for t in conversation(opening, opening[1:], 100)] == [
        ("user", "x\n\ny")
    ]
    big = _stored(5, "z" * 5000)
    (only,) = conversation([], [big], 2000)
    assert len(only.text) <= 2000 and only.text.endswith("[cut to fit the history budget]")
    group = [_stored(1, "hi", sender="ann"), _stored(2, "hey", sender="bob")]
    assert conversation(group, group[1:], 100)[0].text == "ann: hi\n\nbob: hey"


async def test_a_destructive_tool_without_confirmation_does_nothing(
    service: Service, fake: FakeAnthropic
) -> None:
    (added,) = await service.say("/task add every 1h /status")
    task_id = re.search(r"Task (\w+) scheduled", added).group(1)  # type: ignore[union-attr]
    fake.add(
        Answer([ToolUse("tu_1", "delete_task", {"task_id": task_id, "confirmed": False})]),
        Answer("Shall I delete it?"),
    )
    assert await service.say("delete that task") == ["Shall I delete it?"]
    (result,) = _tool_results(fake.requests[-1].body)
    assert result["content"].startswith(f"Not done: this would delete task {task_id}")
    assert "confirmed=true" in result["content"]
    assert await service.orch.services.db.scalar("SELECT count(*) FROM tasks") == 1

    fake.add(
        Answer([ToolUse("tu_2", "delete_task", {"task_id": task_id, "confirmed": True})]),
        Answer("Deleted."),
    )
    assert await service.say("yes, delete it") == ["Deleted."]
    (result,) = _tool_results(fake.requests[-1].body)
    assert f"Task {task_id} deleted" in result["content"]
    assert await service.orch.services.db.scalar("SELECT count(*) FROM tasks") == 0


async def test_a_refused_tool_input_goes_back_as_an_error(
    service: Service, fake: FakeAnthropic
) -> None:
    fake.add(
        Answer(
            [
                ToolUse("tu_1", "show_run", {"run_id": "../etc"}),
                ToolUse("tu_2", "show_run", {"run_id": "zz9"}),
            ]
        ),
        Answer("Neither exists."),
    )
    assert await service.say("show runs") == ["Neither exists."]
    bad, missing = _tool_results(fake.requests[-1].body)
    assert bad["is_error"] and "is not an id" in bad["content"]
    assert missing["is_error"] and "no run with id starting 'zz9'" in missing["content"]
    tools = await service.rows(
        "SELECT tool_name, ok FROM tool_call_log WHERE tool_name = 'show_run'"
    )
    assert tools == [{"tool_name": "show_run", "ok": 0}] * 2


async def test_a_tool_value_reaches_the_recipe_as_one_value_and_the_chain_names_the_form(
    service: Service, fake: FakeAnthropic
) -> None:
    """No command text in between: a value with quotes and a second command in it is the
    one value the recipe checks (and refuses), and nothing else runs."""
    value = "cpu'; /run stop abc '"
    launch = {"recipe": "gpt", "params": {"device": value, "steps": 5}, "gpus": 0}
    fake.add(Answer([ToolUse("tu_1", "launch_training", launch)]), Answer("Not a device."))
    assert await service.say("train gpt on that device") == ["Not a device."]
    (result,) = _tool_results(fake.requests[-1].body)
    assert result["is_error"]
    assert result["content"].startswith(f"device={value!r} is not one of auto, cpu, cuda")
    assert "Usage:" not in result["content"]  # the chat's usage text is for people
    assert await service.orch.services.runs.repo.recent(5) == []
    (row,) = await service.rows(
        "SELECT output, ok FROM tool_call_log WHERE tool_name = 'launch_training'"
    )
    assert row["ok"] == 0 and '"command":"/run train"' in row["output"]


async def test_usage_shows_the_four_token_kinds_and_the_cost(
    service: Service, fake: FakeAnthropic
) -> None:
    fake.add(Answer("hi", usage=Usage(1200, 300, 5000, 800)))
    await service.say("hello")
    (report,) = await service.say("/usage")
    # sonnet 5.5: 1200*2 + 300*10 + 5000*0.10 + 800*2.50 = 7,900 per million
    assert "input 1,200 · output 300 · cache read 5,000 · cache write 800 tokens" in report
    assert "1 call(s), $0.0079" in report and f"{ADMIN}  1 call(s) · 7,300 tokens" in report
    assert "Budget: none" in report and f"Model: {MODEL} (Anthropic)" in report
    line = await usage_line(service.orch.services)
    assert (
        line
        == "Model use today: 1 call(s), input 1,200, output 300, cache read 5,000, cache write 800 tokens, $0.0079"
    )
    (status,) = await service.say("/status")
    assert f"Model: {MODEL} (Anthropic)" in status


async def test_without_a_key_the_offline_reply_is_kept(
    settings: Settings, fake: FakeAnthropic
) -> None:
    no_key = settings.model_copy(update={"anthropic_api_key": None, "anthropic_base_url": fake.url})
    async with open_service(no_key, fake) as svc:
        (reply,) = await svc.say("hello?")
    assert reply.startswith("No model is configured")
    assert fake.requests == []


async def test_the_turn_limit_stops_without_running_unread_tools(
    settings: Settings, fake: FakeAnthropic
) -> None:
    async with open_service(model_settings(settings, fake, agent_max_turns=2), fake) as svc:
        fake.add(
            Answer([ToolUse("tu_1", "status", {})]),
            Answer([ToolUse("tu_2", "list_runs", {})]),
        )
        (reply,) = await svc.say("check everything")
        names = [r["tool_name"] for r in await svc.rows("SELECT tool_name FROM tool_call_log")]
    assert reply.startswith("I stopped before finishing: I used the 2 model calls")
    assert "ASSISTANT_AGENT_MAX_TURNS" in reply and "Done so far: status." in reply
    assert len(fake.requests) == 2 and "list_runs" not in names


async def test_the_time_limit_stops_a_slow_model(settings: Settings, fake: FakeAnthropic) -> None:
    async with open_service(model_settings(settings, fake, agent_timeout_s=0.3), fake) as svc:
        fake.add(Answer("too late", delay_s=1.0))
        (reply,) = await svc.say("hello")
        calls = await svc.rows("SELECT ok, error FROM action_log WHERE action_type = 'model_call'")
    assert reply.startswith("I stopped before finishing: this took longer than 0.3 s")
    assert calls == [{"ok": 0, "error": "no answer within the 0.3 s limit"}]


async def test_a_chat_without_command_rights_gets_no_tools(
    settings: Settings, fake: FakeAnthropic, db: Database, event_log: EventLog
) -> None:
    ran: list[str] = []

    async def invoke(
        chat: str, sender: str, event: int | None, command: str, call: object
    ) -> Reply:
        ran.append(command)
        return Reply("done")

    agent = ClaudeAgent(
        settings=model_settings(settings, fake),
        event_log=event_log,
        usage=UsageRepo(db),
        messages=MessageRepo(db),
        invoke=invoke,
        redactor=Redactor([API_KEY]),
        is_admin=lambda chat: False,
    )
    # a model that calls a tool it was not offered still runs nothing
    fake.add(
        Answer([ToolUse("tu_1", "stop_run", {"run_id": "ab12", "confirmed": True})]),
        Answer("Ask an admin for that."),
    )
    try:
        prompt = StoredMessage(0, "tg:3003", "bob", "stop every run", "", False, None)
        assert await agent.respond("tg:3003", [prompt], None) == ["Ask an admin for that."]
    finally:
        await agent.aclose()
    first = fake.requests[0]
    assert "tools" not in first.body and "no command rights" in first.body["system"][0]["text"]
    assert first.headers["Authorization"] == f"Bearer {API_KEY}"
    (result,) = _tool_results(fake.requests[1].body)
    assert result["is_error"] and "no command rights" in result["content"]
    assert ran == []


async def test_the_fake_answers_plain_json_and_streams_tool_input(fake: FakeAnthropic) -> None:
    tool = ToolUse("tu_9", "run_logs", {"run_id": "ab12", "lines": 5})
    fake.add(Answer([Text("Sure."), tool], usage=Usage(10, 2, 3, 4)), Answer([tool]))
    client = anthropic.AsyncAnthropic(api_key="k", base_url=fake.url, max_retries=0)
    try:
        plain = await client.messages.create(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "x"}]
        )
        async with client.messages.stream(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "x"}]
        ) as stream:
            streamed = await stream.get_final_message()
    finally:
        await client.close()
    assert plain.stop_reason == "tool_use" and plain.usage.cache_creation_input_tokens == 4
    assert plain.content[1].type == "tool_use" and plain.content[1].input == tool.input
    assert streamed.content[0].type == "tool_use" and streamed.content[0].input == tool.input
    assert not fake.requests[0].streamed and fake.requests[1].streamed


async def test_an_unknown_model_costs_nothing_and_says_so(
    settings: Settings, fake: FakeAnthropic, caplog: pytest.LogCaptureFixture
) -> None:
    custom = model_settings(settings, fake, model="my-proxy-model")
    async with open_service(custom, fake) as svc:
        fake.add(Answer("hi"))
        with caplog.at_level(logging.WARNING):
            await svc.say("hello")
        rows = await svc.rows("SELECT model, cost_usd FROM model_usage")
    assert rows == [{"model": "my-proxy-model", "cost_usd": 0.0}]
    assert "no price known for model 'my-proxy-model'" in caplog.text
