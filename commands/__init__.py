"""Built-in chat commands: one module per family, composed into one router."""

from __future__ import annotations

from commands.registry import CommandRouter


def build_router() -> CommandRouter:
    from commands import chats, debug, help, runs, status, tasks, usage, watch

    router = CommandRouter()
    for module in (help, status, tasks, runs, debug, chats, usage, watch):
        router.include(module.router)
    return router
