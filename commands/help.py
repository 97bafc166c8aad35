"""/help: every command with its usage."""

from __future__ import annotations

from commands.formatting import shorten
from commands.registry import CommandContext, CommandRouter, ParsedCommand, usage_error

router = CommandRouter()


@router.command("help", usage="/help [command]", summary="list the commands", traced=False)
async def help_command(ctx: CommandContext, cmd: ParsedCommand) -> str:
    commands = ctx.router.commands
    if cmd.args:
        name = cmd.args[0].lstrip("/").lower()
        spec = commands.get(name)
        if spec is None:
            raise usage_error(commands["help"], f"There is no command /{shorten(name)}.")
        return f"/{spec.name}: {spec.summary}\n{spec.usage}"
    lines = ["Commands:"]
    for spec in commands.values():
        lines.append(f"/{spec.name} — {spec.summary}")
        lines.extend(f"  {line}" for line in spec.usage.splitlines())
    lines.append("Anything else is a message for the assistant.")
    return "\n".join(lines)
