"""The `assistant` command line: `up` runs the service; `send`, `chat` and `inbox` talk to it.

The client commands are run many times a day, so this module imports only click and the
standard library at the top: each command imports what it needs when it runs. The client
path (client_config.py, local_client.py) never loads the service, its SDKs or pydantic;
tests/test_cli_end_to_end.py checks which modules a real `assistant send` loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from assistant import log_context
from assistant.errors import ChannelError, ConfigError, OpsError
from storage.ids import encode

if TYPE_CHECKING:
    from assistant.config import Settings
    from assistant.local_client import Incoming, LocalClient
    from assistant.redaction import Redactor


class RedactingFormatter(logging.Formatter):
    """Diagnostics pass through the same redactor as the event log: no secret in logs."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self.redactor(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for log collectors (journald, Loki, a compose json-file log).

    Keys: `time` (UTC, ms), `level`, `logger`, `message`, `exc` (the traceback, when there
    is one), and `event_id` / `action_id` (as `/debug` prints them) when the line was
    logged inside an event-log action or tool call. Each text is redacted before it is
    encoded: the redactor sees what was written, so a secret holding a quote or a backslash
    is found (escaped in the encoded line, it would no longer match), and a mask can never
    cut an escape sequence in two.
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        clean = self.redactor
        entry: dict[str, str] = {
            "time": _utc_ms(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": clean(record.getMessage()),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = clean(record.exc_text)
        if record.stack_info:
            entry["stack"] = clean(self.formatStack(record.stack_info))
        context = log_context.current()
        if context is not None:
            if context.event_id is not None:
                entry["event_id"] = encode(context.event_id)
            if context.action_id is not None:
                entry["action_id"] = encode(context.action_id)
        return json.dumps(entry, ensure_ascii=False)


def _utc_ms(epoch_s: float) -> str:
    """ISO 8601 in UTC with milliseconds: 2025-01-31T09:15:02.123Z."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"assistant: {message}", err=True)
    sys.exit(code)


def _say(settings: Settings, message: str, level: int = logging.INFO) -> None:
    """A line for whoever started the service: plain on stderr, or a JSON log line.

    In the JSON format every line of stderr is JSON, so a collector never meets a line it
    cannot parse; these lines are shown whatever the log level, as the plain ones are.
    """
    if settings.log_format != "json":
        prefix = "assistant: warning: " if level == logging.WARNING else "assistant: "
        click.echo(message if level < logging.WARNING else prefix + message, err=True)
        return
    logger = logging.getLogger("assistant")
    logger.handle(logger.makeRecord(logger.name, level, __file__, 0, message, (), None))


def _settings() -> Settings:
    from assistant.config import load_settings

    try:
        return load_settings()
    except ConfigError as exc:
        _fail(str(exc))


def _setup_logging(settings: Settings) -> None:
    """The service log on stderr, in the configured format, through the one redactor."""
    from assistant.services import shared_redactor

    handler = logging.StreamHandler()
    redactor = shared_redactor(settings)
    formatter = JsonFormatter(redactor) if settings.log_format == "json" else None
    handler.setFormatter(formatter or RedactingFormatter(redactor))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    logging.captureWarnings(True)  # Python's warnings too: redacted, and in the same format
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # httpx logs every request URL, and the Bot API's URLs carry the token.
    logging.getLogger("httpx").setLevel(logging.WARNING)


@click.group()
@click.version_option(package_name="gpu-chatops-assistant", prog_name="assistant")
def main() -> None:
    """A chat-ops assistant for training and benchmark runs on a GPU host.

    Shell completion: eval "$(_ASSISTANT_COMPLETE=bash_source assistant)" in ~/.bashrc
    (zsh_source for zsh, fish_source for fish).
    """


@main.command()
def up() -> None:
    """Run the assistant in the foreground (Ctrl-C or SIGTERM stops it cleanly)."""
    from assistant.config import unknown_settings
    from assistant.home import HomeError, HomeLock, prepare_home
    from storage.db import DatabaseOpenError

    settings = _settings()
    _setup_logging(settings)
    for line in unknown_settings():  # a typo would be ignored without a word
        _say(settings, line, logging.WARNING)
    # One service per home, decided before anything in it is opened or written.
    lock = HomeLock(settings.assistant_home)
    try:
        prepare_home(settings.assistant_home)
        lock.acquire()
    except HomeError as exc:
        _say(settings, str(exc), logging.ERROR)
        sys.exit(1)
    try:
        asyncio.run(_serve(settings))
    except (ChannelError, ConfigError) as exc:  # a port taken, a required engine absent
        _say(settings, str(exc), logging.ERROR)
        sys.exit(2)
    except DatabaseOpenError as exc:
        _say(settings, str(exc), logging.ERROR)
        sys.exit(1)
    except Exception:
        # Through the log, not Python's own print: redacted, and one JSON line in that format.
        logging.getLogger("assistant").critical("the service stopped on an error", exc_info=True)
        sys.exit(1)
    finally:
        lock.release()


async def _serve(settings: Settings) -> None:
    from assistant.channels.local import LocalChannel
    from assistant.orchestrator import Orchestrator

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    local = LocalChannel(settings.endpoint_path, port=settings.local_port)
    async with Orchestrator(settings, channels=[local], platforms=True) as orch:
        local.record_deliveries(orch.services.log)
        _say(
            settings,
            f"assistant is up: data in {settings.assistant_home},"
            f" local channel on 127.0.0.1:{local.port};"
            f" channels: {', '.join(c.name for c in orch.channels)}."
            ' Talk to it with: assistant send "/status"  (Ctrl-C stops)',
        )
        await stop.wait()
        _say(settings, "assistant: stopping")


@main.command()
@click.argument("text")
@click.option(
    "--wait", default=0.0, show_default=True, help="Seconds to keep printing later messages."
)
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the answer.")
def send(text: str, wait: float, timeout: float) -> None:
    """Send TEXT on the local channel and print the replies.

    With --wait, what the assistant said while no client was attached comes first.
    """
    from assistant.client_config import endpoint_path
    from assistant.local_client import exchange

    async def run() -> None:
        # Staying to print later messages, it also shows what waited for a client.
        replies = exchange(endpoint_path(), text, within=timeout, wait=wait, outbox=wait > 0)
        async for reply in replies:
            click.echo(reply)
            click.echo()

    try:
        asyncio.run(run())
    except ChannelError as exc:
        _fail(str(exc), code=1)


@main.command()
def chats() -> None:
    """List the chats the assistant has seen, to find the id to make admin."""
    from assistant.access import Access
    from storage.chats import ChatRepo
    from storage.db import Database, DatabaseOpenError

    settings = _settings()

    async def run() -> None:
        db = await Database.open(settings.db_path)
        chats = ChatRepo(db)
        try:
            rows = await chats.all()
        finally:
            await db.aclose()
        if not rows:
            click.echo("No chats seen yet: write to the assistant from a chat first.")
        access = Access(chats, settings.admin_chats)  # rights() reads only the rows
        for chat in rows:
            rights = access.rights(chat)
            title = f"  {chat.title}" if chat.title else ""
            click.echo(f"{chat.id:24s} {rights:14s} last seen {chat.last_seen[:16]}{title}")
        click.echo(
            "Make one admin: ASSISTANT_ADMIN_CHATS=<id> (restart), or /chat admin <id>"
            " from an admin chat."
        )

    try:
        asyncio.run(run())
    except DatabaseOpenError as exc:
        _fail(str(exc), code=1)


@main.group()
def images() -> None:
    """The run image that training containers start from."""


@images.command("build")
def images_build() -> None:
    """Build the run image on the engine, with no registry (base, wheelhouse, image)."""
    from assistant.runs.docker_runner import build_images

    settings = _settings()
    try:
        asyncio.run(
            build_images(click.echo, docker_host=settings.docker_host, image=settings.run_image)
        )
    except OpsError as exc:
        _fail(str(exc), code=1)
    click.echo(f"built {settings.run_image}")


@main.group()
def recipes() -> None:
    """Recipes declared in ASSISTANT_HOME/recipes.toml (your own training code)."""


@recipes.command("check")
@click.argument("path", required=False, type=click.Path(dir_okay=False, path_type=Path))
def recipes_check(path: Path | None) -> None:
    """Validate the recipes file; every problem is printed with its line number."""
    from assistant.recipes.check import check_file

    settings = _settings()
    status, text = check_file(
        path or settings.recipes_path,
        settings.recipe_roots,
        settings.secrets_dir,
        protected=(settings.assistant_home,),
    )
    click.echo(text)
    sys.exit(status)


@recipes.command("schema")
def recipes_schema() -> None:
    """Print recipes.toml's JSON Schema, for an editor (docs/recipes.schema.json is it)."""
    from assistant.recipes.check import schema_text

    click.echo(schema_text(), nl=False)


@main.command()
def chat() -> None:
    """An interactive prompt on the local channel; later messages print as they come."""
    from assistant.client_config import endpoint_path
    from assistant.local_client import LocalClient

    async def run() -> None:
        async with LocalClient(endpoint_path(), mode="chat", outbox=True) as client:
            click.echo("Connected. Type /help, or Ctrl-D to leave.", err=True)
            stream = client.incoming()
            await _show_backlog(client, stream)
            unsettled: set[str] = set()
            all_settled = asyncio.Event()
            all_settled.set()

            async def printer() -> None:
                async for item in stream:
                    if item.kind != "settled":
                        click.echo(item.text + "\n")
                        await client.ack(item)
                    elif item.id in unsettled:
                        unsettled.discard(item.id)
                        if not unsettled:
                            all_settled.set()

            printing = asyncio.create_task(printer())
            loop = asyncio.get_running_loop()
            try:
                while True:
                    line = await loop.run_in_executor(None, sys.stdin.readline)
                    if not line:
                        break
                    if line.strip():
                        message_id = secrets.token_hex(8)  # known before its answer can come
                        unsettled.add(message_id)
                        all_settled.clear()
                        await client.send(line.strip(), message_id)
                # End of input: answer what was asked before leaving.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(all_settled.wait(), 60)
            finally:
                printing.cancel()
                with contextlib.suppress(asyncio.CancelledError, ChannelError):
                    await printing

    try:
        asyncio.run(run())
    except ChannelError as exc:
        _fail(str(exc), code=1)
    except KeyboardInterrupt:
        pass


@main.command()
def inbox() -> None:
    """Print what the assistant said while no client was attached, then leave.

    Run reports, alerts and notices sent to the local console wait in its outbox until a
    client gets them; `assistant chat` shows them too when it connects.
    """
    from assistant.client_config import endpoint_path
    from assistant.local_client import LocalClient

    async def run() -> None:
        async with LocalClient(endpoint_path(), mode="inbox", outbox=True) as client:
            if not await _show_backlog(client, client.incoming()):
                click.echo("No messages waiting.")

    try:
        asyncio.run(run())
    except ChannelError as exc:
        _fail(str(exc), code=1)


async def _show_backlog(client: LocalClient, stream: AsyncIterator[Incoming]) -> bool:
    """Print the held messages that come first on `stream`, acknowledging each once shown.

    Returns whether there was anything to say.
    """
    note = client.backlog_note()
    if note is None:
        return False
    click.echo(note + "\n")
    for _ in range(client.waiting):
        item = await anext(stream)
        click.echo(item.text + "\n")
        await client.ack(item)
    return True
