"""A live run's rate and ETA from hand-made event sequences, on the monitor's clock.

Times are given explicitly: each `note` is what one monitor pass saw at that moment.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from assistant.runs.monitor import Live, progress_text, run_numbers
from commands.runs import _run_line
from tests.support.run_records import record


def train(step: int, **more: Any) -> dict[str, Any]:
    return {"type": "progress", "step": step, **more}


def bench(done: int, profile: str, profile_done: int, profile_total: int) -> dict[str, Any]:
    return {
        "type": "progress",
        "step": done,
        "total": 300,
        "profile": profile,
        "profile_done": profile_done,
        "profile_total": profile_total,
    }


def feed(live: Live, passes: list[tuple[float, list[dict[str, Any]]]]) -> None:
    for at, events in passes:
        for event in events:
            live.note(event["step"], event, now=at)


def test_events_of_one_pass_give_no_rate() -> None:
    """What Telegram showed as 3049012.89 steps/s: two events microseconds apart."""
    live = Live()
    live.note(0, train(0))
    live.note(30, train(30))
    assert live.steps_per_s is None
    assert not any("/s" in part or "ETA" in part for part in run_numbers(record(), live))


def test_a_burst_in_one_pass_counts_once() -> None:
    live = Live()
    # pass 1 reads a backlog of 500 steps at once; later passes see steady progress
    feed(live, [(100.0, [train(s) for s in range(0, 501, 10)])])
    assert live.rate(100.0) is None
    feed(live, [(105.0, [train(510)]), (110.0, [train(520)]), (115.0, [train(530)])])
    rate = live.rate(115.0)
    assert rate is not None and abs(rate - 2.0) < 1e-9  # 20 steps over 10 s, not 500+ in 0 s


def test_a_resumed_run_does_not_count_its_first_jump() -> None:
    live = Live()
    # resumed from step 5000: the first report, then a jump while it loads and compiles
    feed(live, [(0.0, [train(0)]), (30.0, [train(5000)])])
    assert live.rate(30.0) is None
    feed(live, [(40.0, [train(5010)]), (50.0, [train(5020)])])
    assert live.rate(50.0) == 1.0
    run = record(step=5020, total=6020)
    assert "ETA 16m 40s" in run_numbers(run, live, now=50.0)


def test_a_step_that_goes_back_starts_the_rate_over() -> None:
    live = Live()
    feed(live, [(0.0, [train(10)]), (10.0, [train(20)]), (20.0, [train(30)])])
    assert live.rate(20.0) == 1.0
    feed(live, [(21.0, [train(3)])])
    assert live.rate(21.0) is None


def test_a_rate_needs_a_few_seconds_between_observations() -> None:
    live = Live()
    feed(live, [(0.0, [train(1)]), (1.0, [train(2)]), (1.5, [train(3)]), (2.0, [train(900)])])
    assert live.rate(2.0) is None


def test_a_stalled_run_shows_no_rate_and_no_eta() -> None:
    live = Live()
    feed(live, [(t, [train(int(t))]) for t in (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)])
    run = record(step=25, total=1000)
    assert live.rate(25.0) == 1.0
    assert any(part.startswith("ETA") for part in run_numbers(run, live, now=26.0))
    # heartbeats go on, steps do not: ten minutes later there is no honest rate
    assert live.rate(625.0) is None
    shown = run_numbers(run, live, now=625.0)
    assert not any("/s" in part or "ETA" in part for part in shown)


def test_a_benchmark_eta_counts_requests_of_every_profile() -> None:
    """300 requests over 3 profiles of 100: the ETA is for all of them, in requests/s."""
    live = Live()
    passes: list[tuple[float, list[dict[str, Any]]]] = [(0.0, [bench(0, "short", 0, 100)])]
    # warm-up: nothing for 40 s, then a burst, then 4 requests/s in bursts of 8 every 2 s
    passes.append((40.0, [bench(8, "short", 8, 100)]))
    done = 8
    at = 40.0
    while done < 100:
        at += 2.0
        done = min(100, done + 8)
        passes.append((at, [bench(done, "short", done, 100)]))
    for profile_done in (20, 40):
        at += 5.0
        done += 20
        passes.append((at, [bench(done, "long", profile_done, 100)]))
    feed(live, passes)
    # the server's live metric events carry the step of the profiles already done
    run = record(kind="bench", recipe="serve-bench", step=100, total=300)
    numbers = run_numbers(run, live, now=at)
    rate = live.rate(at)
    assert rate is not None and 3.5 < rate < 4.5  # not 140/73 s with the warm-up in it
    assert f"{rate:.2f} requests/s" in numbers
    assert not any("steps/s" in part for part in numbers)
    eta = next(part for part in numbers if part.startswith("ETA"))
    assert eta in ("ETA 38s", "ETA 39s", "ETA 40s", "ETA 41s", "ETA 42s")  # 160 left at ~4/s
    assert "profile long (40/100 requests)" in numbers
    # /runs counts the same requests, not the lagging stored step
    line = _run_line(run, datetime.now(UTC), live)
    assert "requests 140/300" in line and "step 100" not in line, line


def test_the_progress_text_of_a_benchmark_counts_requests() -> None:
    live = Live()
    feed(live, [(0.0, [bench(0, "short", 0, 100)]), (10.0, [bench(40, "short", 40, 100)])])
    feed(live, [(20.0, [bench(80, "short", 80, 100)]), (30.0, [bench(120, "long", 20, 100)])])
    run = record(id="bb12cd", kind="bench", recipe="serve-bench", step=100, total=300)
    text = progress_text(run, live, now=30.0)
    assert text.startswith("Run bb12cd (serve-bench) · requests 120/300 [####......]")
    assert "4.00 requests/s" in text and "ETA 45s" in text


def test_the_progress_text_of_a_training_run() -> None:
    live = Live()
    events = [(0.0, 10), (10.0, 20), (20.0, 30), (30.0, 40)]
    feed(live, [(at, [train(step, loss=0.5)]) for at, step in events])
    run = record(step=40, total=100, metrics={"loss": 0.5})
    text = progress_text(run, live, now=30.0)
    assert text == "Run ab12cd (gpt) · step 40/100 [####......] · loss 0.5 · 1.00 steps/s · ETA 1m"


def test_a_huge_rate_is_written_readably() -> None:
    live = Live()
    feed(live, [(0.0, [train(0)]), (10.0, [train(50_000)]), (20.0, [train(80_000)])])
    run = record(step=80_000, total=10_000_000)
    assert "3,000 steps/s" in run_numbers(run, live, now=20.0)
