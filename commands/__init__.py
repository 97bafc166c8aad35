"""Built-in chat commands: one module per family, composed into one router."""

from __future__ import annotations

from commands.registry import CommandRouter


def build_router() -> CommandRouter:
    from commands import debug, help, status, tasks

    router = CommandRouter()
    for module in (help, status, tasks, debug):
        router.include(module.router)
    return router
