"""Watch operations: follow a job launched elsewhere, stop following it, list, show, stop it.

`/watch ...` parses its words into these arguments and a model's tool would pass its JSON;
both land here. Rights were checked where the request entered (an admin chat); what is
limited beyond that is here: stopping a watched job only where the admin allowed it
(`ASSISTANT_WATCH_ALLOW_STOP`), since it is not ours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal, Self

from pydantic import BeforeValidator, Field, WithJsonSchema, model_validator

from assistant.errors import NotFoundError, Refused, StateError
from assistant.operations.arguments import Arguments, Id
from assistant.operations.caller import Caller
from assistant.operations.runs import RecipeName
from assistant.watch.output import rules_json

if TYPE_CHECKING:
    from assistant.config import Settings
    from assistant.recipes.catalog import RecipeCatalog
    from assistant.watch.poller import Watcher
    from storage.watches import WatchRecord

# `docker ps` names and ids; Slurm job ids, array tasks (17_3) and het-job parts (17+1)
CONTAINER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
SLURM_JOB = re.compile(r"^[0-9]{1,12}(?:[_+][0-9]{1,9})?$")
MAX_PID = 4_194_304  # the kernel's pid_max ceiling
MAX_PATH = 4096


def _target(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError("target must be a container name or id, a pid, or a Slurm job id")
    return value.strip()


def _log(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/") or len(value) > MAX_PATH:
        raise ValueError(f"log must be an absolute file path, got {str(value)[:80]!r}")
    if "\x00" in value:
        raise ValueError("log must be an absolute file path without NUL")
    return value


Target = Annotated[
    str,
    BeforeValidator(_target),
    WithJsonSchema(
        {
            "type": "string",
            "description": "a container's name or id, a pid on this host, or a Slurm job id",
        }
    ),
]
LogPath = Annotated[
    str | None,
    BeforeValidator(_log),
    WithJsonSchema({"type": "string", "description": "absolute path of a log file it writes"}),
]


class AddWatch(Arguments):
    """Follow a job the assistant did not launch."""

    kind: Literal["container", "pid", "slurm"]
    target: Target
    pattern: RecipeName | None = None  # a declared recipe whose progress rules read its output
    log: LogPath = None  # a pid's output file (default: its stdout, when that is a file)

    @model_validator(mode="after")
    def _target_of_kind(self) -> Self:
        if self.kind == "container" and not CONTAINER.match(self.target):
            raise ValueError(f"{self.target[:80]!r} is not a container name or id")
        if self.kind == "pid" and not (self.target.isdigit() and 1 < int(self.target) <= MAX_PID):
            raise ValueError(f"a pid is a whole number from 2 to {MAX_PID}")
        if self.kind == "slurm" and not SLURM_JOB.match(self.target):
            raise ValueError(f"{self.target[:80]!r} is not a Slurm job id (like 1234 or 1234_7)")
        if self.log is not None and self.kind != "pid":
            raise ValueError("log= is for pid watches (a container's output is its log)")
        return self


class WatchRef(Arguments):
    """One watch, by its id or a unique prefix of it."""

    watch_id: Id = Field(description="a watch id as /watches lists it")


@dataclass(frozen=True)
class Added:
    watch: WatchRecord
    note: str | None


class WatchOperations:
    """Every request about watches, for commands and tools alike."""

    def __init__(self, watcher: Watcher | None, settings: Settings, catalog: RecipeCatalog):
        self._watcher = watcher
        self._settings = settings
        self._catalog = catalog

    @property
    def watcher(self) -> Watcher:
        if self._watcher is None:
            raise StateError("watches are not running in this service")
        return self._watcher

    async def find(self, prefix: str) -> WatchRecord:
        """:raises NotFoundError, AmbiguousIdError: no watch, or several, start with it."""
        return await self.watcher.repo.resolve(prefix)

    async def add(self, caller: Caller, args: AddWatch) -> Added:
        """:raises NotFoundError: no such job, or no such declared recipe. :raises Refused:
        watched already, one of our own runs, a log file that may not be read."""
        rules: dict[str, object] = {}
        if args.pattern is not None:
            entry = self._catalog.get(args.pattern)
            declared = entry.declared if entry is not None else None
            if declared is None:
                declared_names = [
                    e.info.name for e in self._catalog.entries() if e.declared is not None
                ]
                shown = ", ".join(declared_names) or "none is declared"
                raise NotFoundError(
                    f"pattern= names a declared recipe whose progress rules read the output;"
                    f" {args.pattern!r} is none ({shown})"
                )
            rules = {
                **rules_json(declared.progress),
                "key_metric": declared.key_metric,
                "key_metric_mode": declared.key_metric_mode,
            }
        watch, note = await self.watcher.add(
            caller.chat_id,
            caller.event_id,
            args.kind,
            args.target,
            pattern=args.pattern,
            rules=rules,
            log_path=args.log,
        )
        return Added(watch, note)

    async def remove(self, caller: Caller, ref: WatchRef) -> WatchRecord:
        """:raises StateError: it is over already."""
        return await self.watcher.unwatch(await self.find(ref.watch_id), caller.event_id)

    async def stop(self, caller: Caller, ref: WatchRef) -> tuple[WatchRecord, str]:
        """:raises Refused: stopping watched jobs is not allowed here, or it cannot be."""
        if not self._settings.watch_allow_stop:
            raise Refused(
                "stopping a watched job from chat is off: it was not launched by the assistant."
                " An admin allows it with ASSISTANT_WATCH_ALLOW_STOP=true (then a restart)."
            )
        watch = await self.find(ref.watch_id)
        return watch, await self.watcher.stop(watch, caller.event_id)

    async def listing(self, recent: int = 5) -> tuple[list[WatchRecord], list[WatchRecord]]:
        repo = self.watcher.repo
        return await repo.active(), await repo.recent(recent)

    async def show(self, ref: WatchRef) -> tuple[WatchRecord, list[str]]:
        watch = await self.find(ref.watch_id)
        return watch, self.watcher.tail(watch, 10)
