"""/chat: which chats may talk to the assistant, and which may command it."""

from __future__ import annotations

import logging

from assistant.config import CHAT_ID_RE
from assistant.errors import CommandError, StateError
from commands.registry import CommandContext, CommandRouter, Guard, ParsedCommand, usage_error

log = logging.getLogger(__name__)
router = CommandRouter()

USAGE = "\n".join(
    [
        "/chat list — chats seen, with their rights (`assistant chats` too)",
        "/chat allow <id> — answer free text there (when addressed), no commands",
        "/chat admin <id> — full rights: commands too",
        "/chat revoke <id> — take both away",
        "/chat mode <id> addressed|all — answer only when addressed, or every message",
    ]
)


# Access management stays with people: a task or the model that could grant rights would
# outlive a revoke (a task re-granting its own chat) or act on a prompt's say-so.
ACCESS_MANAGEMENT = Guard(
    "*",
    people_only=True,
    why="/chat is access management, which only a person does, in an admin chat;"
    " never a task or the model",
)


@router.command(
    "chat",
    usage=USAGE,
    summary="who may talk to the assistant",
    quiet=frozenset({"list"}),
    guards=(ACCESS_MANAGEMENT,),
)
async def chat_command(ctx: CommandContext, cmd: ParsedCommand) -> str:
    spec = router.commands["chat"]
    if not cmd.args:
        raise usage_error(spec, "Say what to do.")
    sub, rest = cmd.args[0].lower(), cmd.args[1:]
    access = ctx.services.access
    if sub == "list" and not rest:
        return await chat_list(ctx)
    if sub not in ("allow", "admin", "revoke", "mode"):
        raise usage_error(spec, f"Unknown /chat action {cmd.args[0]!r}.")
    wanted = 2 if sub == "mode" else 1
    if len(rest) != wanted:
        raise usage_error(
            spec, f"/chat {sub} takes {'an id and a mode' if wanted == 2 else 'one id'}."
        )
    chat_id = rest[0]
    if not CHAT_ID_RE.match(chat_id):
        raise usage_error(
            spec, f"{chat_id!r} is not a chat id; ids look like tg:12345, sl:C0123, dc:987."
        )
    if chat_id in access.configured:
        raise StateError(
            f"{chat_id} is an admin by configuration (ASSISTANT_ADMIN_CHATS or the local"
            " console); change it there."
        )
    if sub == "allow":
        await access.grant(chat_id, allowed=True)
        return f"{chat_id} may talk to the assistant now (free text when addressed; no commands)."
    if sub == "admin":
        await access.grant(chat_id, admin=True, allowed=True)
        await _follow_menus(ctx)
        return f"{chat_id} is an admin chat now: commands work there."
    if sub == "revoke":
        await access.grant(chat_id, admin=False, allowed=False)
        await _follow_menus(ctx)
        return f"{chat_id} may no longer command or talk to the assistant."
    mode = rest[1].lower()
    if mode not in ("addressed", "all"):
        raise CommandError(f"mode is addressed or all, not {rest[1]!r}")
    await access.grant(chat_id, reply_mode=mode)
    return f"{chat_id}: free text answered {'always' if mode == 'all' else 'when addressed'}."


async def _follow_menus(ctx: CommandContext) -> None:
    """Give each platform's command menu the admin chats as they are now: a new admin
    chat gets every command, a revoked one only /help. The rights changed whatever a
    platform says: a menu that fails to update is logged, not the reply."""
    admins = ctx.services.access.admin_chats()
    for channel in ctx.services.channels:
        try:
            await channel.set_menu(admins, ctx.router.menu())
        except Exception as exc:
            log.warning("%s: the command menu did not follow the new rights: %s", channel.name, exc)


async def chat_list(ctx: CommandContext) -> str:
    chats = await ctx.services.chats.all()
    if not chats:
        return "No chats seen yet."
    access = ctx.services.access
    lines = []
    for chat in chats:
        rights = access.rights(chat)
        title = f" “{chat.title}”" if chat.title else ""
        lines.append(
            f"{chat.id}{title} · {rights} · replies {chat.reply_mode} · last {chat.last_seen[:16]}"
        )
    return "\n".join(lines)
