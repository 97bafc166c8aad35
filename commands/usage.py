"""/usage: what the model has used, in tokens and dollars, against the daily budget.

Days are UTC days, as the budget counts them. Read-only, so not traced.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from commands.registry import CommandContext, CommandRouter, ParsedCommand, usage_error
from storage.usage import UsageRepo, UsageTotals, utc_day

if TYPE_CHECKING:
    from assistant.services import Services

router = CommandRouter()

USAGE = "/usage — model tokens and cost: today, the last 7 days, today by chat, the budget"
DAYS = 7


@router.command("usage", usage=USAGE, summary="model tokens, cost and budget", traced=False)
async def usage_command(ctx: CommandContext, cmd: ParsedCommand) -> str:
    if cmd.args:
        raise usage_error(router.commands["usage"], "/usage takes no arguments.")
    s = ctx.services
    repo = UsageRepo(s.db)
    now = s.clock.now()
    today = utc_day(now)
    total = await repo.day_total(today)
    lines = [
        f"Model: {s.agent.description}",
        f"Today ({today} UTC): {total.calls} call(s), {money(total.cost_usd)}",
        "  " + token_kinds(total),
        budget_line(total.cost_usd, s.settings.daily_budget_usd),
        f"Last {DAYS} days (UTC):",
    ]
    by_day = {t.key: t for t in await repo.totals_by_day(DAYS, now=now)}
    for back in range(DAYS):
        day = utc_day(now - timedelta(days=back))
        row = by_day.get(day)
        lines.append(f"  {day[5:]}  " + (_short(row) if row else "none"))
    chats = await repo.totals_by_chat(today)
    lines.append("Today by chat:" + ("" if chats else " none"))
    lines.extend(f"  {c.key or '(no chat)'}  {_short(c)}" for c in chats)
    return "\n".join(lines)


async def usage_line(services: Services) -> str:
    """Today's use in one line, for /status."""
    total = await UsageRepo(services.db).day_total(utc_day(services.clock.now()))
    budget = services.settings.daily_budget_usd
    of = f" of {money(budget)} budget" if budget > 0 else ""
    return (
        f"Model use today: {total.calls} call(s), input {total.input:,}, output"
        f" {total.output:,}, cache read {total.cache_read:,}, cache write"
        f" {total.cache_write:,} tokens, {money(total.cost_usd)}{of}"
    )


def money(amount: float) -> str:
    """Cents for dollars, more digits for the fractions one model call costs."""
    return f"${amount:,.2f}" if amount >= 1 or amount == 0 else f"${amount:.4f}"


def token_kinds(t: UsageTotals) -> str:
    return (
        f"input {t.input:,} · output {t.output:,} · cache read {t.cache_read:,}"
        f" · cache write {t.cache_write:,} tokens"
    )


def budget_line(spent: float, budget: float) -> str:
    if budget <= 0:
        return "Budget: none (ASSISTANT_DAILY_BUDGET_USD=0)"
    left = max(budget - spent, 0.0)
    state = "spent: free text waits until 00:00 UTC" if spent >= budget else f"{money(left)} left"
    return f"Budget: {money(spent)} of {money(budget)} a day, {state}"


def _short(t: UsageTotals) -> str:
    return f"{t.calls} call(s) · {t.tokens:,} tokens · {money(t.cost_usd)}"
