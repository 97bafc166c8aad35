"""Reading the chain back: every hop to the root, tool calls, failures, missing links."""

from __future__ import annotations

from assistant.observability import EventLog
from storage import eventlog
from storage.db import Database
from storage.ids import encode


async def build_chain(log: EventLog) -> dict[str, int]:
    """message -> run_launched (2 tool calls, one failed) -> run failed -> report sent."""
    msg = log.log_event("telegram", "m1", summary="Message from ann: /run train gpt")
    async with log.action(msg, "run_launched", target="gpt") as launch:
        async with log.tool_call("docker.create", {"image": "run:latest"}) as call:
            call.output = "c0ffee"
        log.log_tool_call(launch.id, "docker.start", duration_ms=12.5, ok=False, error="no GPU")
    failed = log.log_event("run", "r1", summary="run r1 failed", caused_by=launch.id)
    report = log.log_action(failed, "message_sent", target="tg:1", ok=False, error="HTTP 429")
    unrelated = log.log_event("local", summary="other")
    log.log_action(unrelated, "command", target="/status")
    await log.flush()
    return {"msg": msg, "launch": launch.id, "failed": failed, "report": report}


async def test_why_walks_every_hop_back_to_the_root(db: Database, event_log: EventLog) -> None:
    ids = await build_chain(event_log)
    steps = await db.read_sync(eventlog.chain_to, ids["report"])
    assert [s.event.id if s.event else None for s in steps] == [ids["msg"], ids["failed"]]
    assert [s.action.id if s.action else None for s in steps] == [ids["launch"], ids["report"]]
    launch = steps[0].action
    assert launch is not None
    assert [(t.tool_name, t.ok, t.error) for t in launch.tools] == [
        ("docker.create", True, None),
        ("docker.start", False, "no GPU"),
    ]
    assert steps[1].action is not None and steps[1].action.error == "HTTP 429"


async def test_a_pruned_link_is_shown_not_hidden(db: Database, event_log: EventLog) -> None:
    ids = await build_chain(event_log)
    await db.write("DELETE FROM action_log WHERE id = ?", (ids["launch"],))
    steps = await db.read_sync(eventlog.chain_to, ids["report"])
    assert steps[0].event is None and steps[0].missing_event_id == ids["launch"]
    assert steps[1].event is not None and steps[1].event.id == ids["failed"]


async def test_event_tree_follows_actions_into_caused_events(
    db: Database, event_log: EventLog
) -> None:
    ids = await build_chain(event_log)
    tree = await db.read_sync(eventlog.event_tree, ids["msg"])
    assert tree is not None
    ((launch, children),) = tree.actions
    assert launch.id == ids["launch"]
    assert [c.event.id for c in children] == [ids["failed"]]
    assert [a.id for a, _ in children[0].actions] == [ids["report"]]


async def test_prefixes_find_rows_in_any_table(db: Database, event_log: EventLog) -> None:
    ids = await build_chain(event_log)
    exact = await db.read_sync(eventlog.find_ids, encode(ids["launch"]), ("event", "action"))
    assert exact == [("action", ids["launch"])]
    common = encode(ids["msg"])[:5]  # same second: every row shares it
    several = await db.read_sync(eventlog.find_ids, common, ("event", "action", "tool"))
    assert len(several) > 1


async def test_report_counts_and_failures(db: Database, event_log: EventLog) -> None:
    await build_chain(event_log)
    data = await db.read_sync(eventlog.report, None)
    assert data.totals == {"events": 3, "actions": 3, "tool calls": 2}
    assert dict((k, n) for k, n in data.by_source) == {"telegram": 1, "run": 1, "local": 1}
    assert [t.tool_name for t in data.failed_tools] == ["docker.start"]
    assert [(a.error, e.source if e else None) for a, e in data.failed_actions] == [
        ("HTTP 429", "run")
    ]
