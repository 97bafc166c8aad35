"""The orchestrator: every message in, every message out, and the services' lifecycle.

Incoming text is either a built-in command (answered here, at once, never stored, never
queued) or conversation (stored, then handed to the agent through the group queue).
Every step is an event or an action in the chain, so /debug why can explain it later.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType

from assistant.access import Access
from assistant.actions import Actions, Drawn
from assistant.agent import Agent, OfflineAgent
from assistant.channels.base import Channel, Claimed, IncomingMessage, Press, PressResult
from assistant.channels.factory import platform_channels
from assistant.claude_agent import ClaudeAgent, build_claude_agent
from assistant.clock import Clock, SystemClock
from assistant.config import Settings
from assistant.errors import CommandError, Refused
from assistant.health import HealthChecks
from assistant.hoststats import HostStats
from assistant.http_server import HttpServer
from assistant.metrics import Metrics
from assistant.observability import EventLog
from assistant.pruner import Pruner
from assistant.queue import GroupQueue
from assistant.redaction import Redactor
from assistant.reply import PLATFORM_THREAD, Reply, platform_thread
from assistant.runs.runner import Runner
from assistant.runs.select import choose_runner, gpu_inventory
from assistant.scheduler import TaskScheduler
from assistant.services import Services, build_runs, build_watcher, shared_redactor
from assistant.tracing import start_tracing, stop_tracing
from commands import build_router
from commands.registry import (
    CommandContext,
    CommandRouter,
    ParsedCommand,
    looks_like_command,
    parse_command,
)
from commands.task_rights import TaskRights
from storage.buttons import ButtonRepo
from storage.chats import ChatRepo
from storage.db import Database
from storage.kv import KeyValue
from storage.messages import MessageRepo, StoredMessage
from storage.runs import RunRepo
from storage.tasks import Task, TaskRepo

log = logging.getLogger(__name__)


class State(enum.Enum):
    UNOPENED = 1
    OPENED = 2
    CLOSED = 3


class Orchestrator:
    """`async with Orchestrator(settings, channels=[...]) as orch:` runs the whole service."""

    def __init__(
        self,
        settings: Settings,
        *,
        channels: Sequence[Channel] = (),
        clock: Clock | None = None,
        agent: Agent | None = None,
        router: CommandRouter | None = None,
        runner: Runner | None = None,
        platforms: bool = False,
    ) -> None:
        self.settings = settings
        self.channels = list(channels)
        self.clock = clock or SystemClock()
        self.router = router or build_router()
        self._agent = agent
        self._runner = runner
        self._platforms = platforms  # also start the chat platforms whose tokens are set
        self._state = State.UNOPENED
        self._known_chats: set[str] = set()
        # chat -> seq of a stored message awaiting the model's answer -> the thread it was
        # typed in: the answer, and a confirmation the model asks for on the way, go there
        # (kept in memory: after a restart, top level)
        self._typed_in: dict[str, dict[int, str]] = {}
        # chat -> the thread of the batch the model is answering now (None: top level)
        self._answering: dict[str, str | None] = {}
        # the process's one redactor (cli.py's log formatter holds the same object)
        self.redact: Redactor = shared_redactor(settings)
        self.services: Services

    # ---- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Orchestrator:
        if self._state is not State.UNOPENED:
            raise RuntimeError("an orchestrator is opened once")
        self._state = State.OPENED
        settings = self.settings
        # The database first: a file the service cannot use is the one line a failed start
        # says. Then the runner, before anything else: a required engine that is missing
        # stops here too.
        db = await Database.open(settings.db_path)
        host = HostStats()
        inventory = gpu_inventory(settings, host)
        try:
            runner = self._runner or await choose_runner(settings, len(inventory))
        except BaseException:
            await db.aclose()
            raise
        if runner.capabilities.hosts is not None:  # a pool: the largest host's GPUs
            inventory = list(range(runner.capabilities.hosts.gpu_count))
        redactor = self.redact
        event_log = EventLog(db, redactor, flush_interval=settings.event_flush_interval_s)
        await event_log.start()
        if self._platforms:
            try:
                self.channels.extend(platform_channels(settings, KeyValue(db)))
            except BaseException:
                await event_log.aclose()
                await db.aclose()
                raise
        self.messages = MessageRepo(db, redactor)
        self.actions = Actions(ButtonRepo(db), self.clock)
        chats = ChatRepo(db)
        access = Access(chats, settings.admin_chats)
        queue = GroupQueue(self._process_chat, settings.max_concurrent)
        rights = TaskRights(access, self.router)  # a task's rights, checked when it fires
        scheduler = TaskScheduler(TaskRepo(db), event_log, settings, self.clock, self, rights)
        agent = self._agent or self._model_agent(db, event_log)
        run_manager, run_monitor = build_runs(
            RunRepo(db, redactor),
            runner,
            event_log,
            settings,
            self.clock,
            self.send,
            inventory,
            self.show_progress,
        )
        self.services = Services(
            settings=settings,
            db=db,
            log=event_log,
            clock=self.clock,
            queue=queue,
            scheduler=scheduler,
            channels=self.channels,
            chats=chats,
            access=access,
            host=host,
            agent=agent,
            started_at=self.clock.now(),
            send=self.send,
            runs=run_manager,
            monitor=run_monitor,
            redactor=redactor,
            metrics=Metrics(self.router.commands),
        )
        self.services.watches = build_watcher(db, event_log, settings, self.clock, self.send)
        start_tracing(settings, event_log, redactor)  # when ASSISTANT_OTLP_ENDPOINT is set
        self.pruner = Pruner(db, event_log, settings, scheduler.prune_runs, self.actions.prune)
        try:
            # /healthz now; other routes (/metrics) are added on services.http before start
            self.services.http = HttpServer.from_settings(settings)
            if self.services.http is not None:
                self.services.http.add_get("/healthz", HealthChecks(self.services).handle)
                self.services.http.add_get("/metrics", self.services.metrics.handler(self.services))
            event_log.log_event("system", None, summary="assistant started")
            await access.load()
            await self.pruner.start()
            for channel in self.channels:
                await channel.start(self)
                # admin chats now: the configured ones and those granted with /chat admin
                await channel.set_menu(access.admin_chats(), self.router.menu())
            await scheduler.start()
            await self.services.monitor.start()
            if self.services.watches is not None:
                await self.services.watches.start()
            for chat_id in await self.messages.chats_with_pending():
                queue.enqueue(chat_id)  # conversation that arrived before a crash
            if self.services.http is not None:  # last: healthy means every service is up
                await self.services.http.start()
        except BaseException:
            await self._shutdown()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._shutdown()

    async def _shutdown(self) -> None:
        if self._state is State.CLOSED:
            return
        self._state = State.CLOSED
        services = self.services
        if services.http is not None:  # first: a supervisor sees the stop at once
            await services.http.aclose()
        await services.monitor.aclose()
        if services.watches is not None:
            await services.watches.aclose()
        await services.runs.runner.aclose()
        await services.scheduler.aclose()
        await self.pruner.aclose()
        for channel in reversed(self.channels):
            try:
                await channel.aclose()
            except Exception:
                log.exception("closing channel %s", channel.name)
        await services.queue.aclose()
        if isinstance(services.agent, ClaudeAgent) and services.agent is not self._agent:
            await services.agent.aclose()  # the one _model_agent made
        services.log.log_event("system", None, summary="assistant stopped")
        await services.log.aclose()
        await asyncio.to_thread(stop_tracing, services.log)  # after the last rows
        services.host.aclose()
        await services.db.aclose()

    # ---- the model (hook for assistant/claude_agent.py: it needs what __aenter__ makes) ---

    def _model_agent(self, db: Database, event_log: EventLog) -> Agent:
        """Claude when ANTHROPIC_API_KEY is set (closed in _shutdown), else the offline reply."""
        claude = build_claude_agent(
            self.settings,
            db=db,
            event_log=event_log,
            messages=self.messages,
            invoke=self.invoke,
            is_admin=self.is_admin,
            offer=self.offer,
        )
        if claude is not None:
            return claude
        return OfflineAgent(
            [
                f"{spec.usage.splitlines()[0]} — {spec.summary}"
                for spec in self.router.commands.values()
            ]
        )

    # ---- incoming ----------------------------------------------------------------------

    def is_admin(self, chat_id: str) -> bool:
        return self.services.access.is_admin(chat_id)

    def _channel_for(self, chat_id: str) -> Channel | None:
        for channel in self.channels:
            if channel.owns(chat_id):
                return channel
        return None

    async def deliver(self, message: IncomingMessage) -> None:
        """Entry point of every channel (the `Inbox` protocol).

        Secrets are masked here, before anything else sees the text: a token pasted into
        a chat is never stored (messages, tasks, the event chain) nor sent to the model.
        """
        message = dataclasses.replace(
            message, sender=self.redact(message.sender), chat_title=self.redact(message.chat_title)
        )
        text = self.redact(message.text.strip())
        admin = self.is_admin(message.chat_id)
        if message.chat_id not in self._known_chats:
            await self.services.chats.seen(message.chat_id, message.chat_title)
            self._known_chats.add(message.chat_id)
        source = self._source_name(message.chat_id)
        # the chat's rights were read above from chat_id; the thread only says where to answer
        thread = platform_thread(message.thread) if message.thread else None
        if looks_like_command(text):
            if not admin:
                log.warning("ignored command from non-admin chat %s", message.chat_id)
                return
            await self.handle_command(
                message.chat_id,
                message.sender,
                text,
                source=source,
                source_id=message.platform_id,
                thread=thread,
            )
            return
        await self._store_conversation(message, text, source, self.services.access.answers(message))

    async def settled(self, chat_id: str) -> None:
        await self.services.queue.settled(chat_id)

    async def press(self, press: Press, claimed: Claimed | None = None) -> PressResult:
        """A button pressed in a chat (the `Inbox` protocol); see assistant/actions.py.

        Rights are the chat's now, not when the button was drawn. `claimed` hears the
        decision before the command runs. Never raises: the channel must still answer
        the platform.
        """
        press = dataclasses.replace(press, sender=self.redact(press.sender))
        try:
            return await self.actions.press(
                press, self.is_admin(press.chat_id), self._run_pressed, claimed
            )
        except Exception as exc:
            log.exception("a button press in %s failed", press.chat_id)
            return PressResult(False, f"Sorry, that failed inside the assistant: {exc}")

    async def _run_pressed(
        self,
        chat_id: str,
        sender: str,
        text: str,
        source: str,
        source_id: str | None,
        thread: str | None,
    ) -> str:
        reply = await self.handle_command(
            chat_id, sender, text, source=source, source_id=source_id, pressed=True, thread=thread
        )
        return reply.text

    def _source_name(self, chat_id: str) -> str:
        channel = self._channel_for(chat_id)
        return channel.name if channel is not None else chat_id.split(":", 1)[0]

    async def _store_conversation(
        self, message: IncomingMessage, text: str, source: str, answer: bool
    ) -> None:
        services = self.services
        event_id = services.log.log_event(
            source,
            message.platform_id,
            summary=f"Message from {message.sender}: {text[:80]}",
            content={"chat": message.chat_id, "sender": message.sender, "text": text},
        )
        try:
            async with services.log.action(
                event_id, "message_stored", target=message.chat_id
            ) as act:
                seq = await self.messages.store(
                    message.chat_id,
                    message.sender,
                    text,
                    platform_id=message.platform_id,
                    action_id=act.id,
                    answer=answer,
                )
                act.content = {"seq": seq} if seq else "duplicate delivery, ignored"
        except Exception as exc:
            log.error("could not store a message from %s: %s", message.chat_id, exc)
            text = f"I could not store your message ({exc}); it was not processed. Please resend."
            thread = platform_thread(message.thread) if message.thread else None
            await self.send(message.chat_id, Reply(text, thread=thread), event_id)
            return
        if seq is not None and answer:
            if message.thread:
                waiting = self._typed_in.setdefault(message.chat_id, {})
                waiting[seq] = platform_thread(message.thread)
            services.queue.enqueue(message.chat_id)

    # ---- commands ----------------------------------------------------------------------

    async def execute_command(
        self, chat_id: str, sender: str, text: str, event_id: int | None
    ) -> tuple[Reply, str | None]:
        """Run a command; returns the reply and the error (None when it succeeded).

        The model's tools and scheduled tasks come in here: masked like a chat's text.
        """
        text = self.redact(text)
        try:
            parsed = parse_command(text)
        except CommandError as exc:
            return Reply(str(exc)), str(exc)
        return await self._execute(chat_id, sender, parsed, event_id)

    async def _execute(
        self,
        chat_id: str,
        sender: str,
        parsed: ParsedCommand,
        event_id: int | None,
        pressed: bool = False,
    ) -> tuple[Reply, str | None]:
        spec = self.router.find(parsed.name)
        if spec is None:
            self.services.metrics.observe_command(None, 0.0, ok=False)
            problem = f"Unknown command /{parsed.name}. /help lists the commands."
            return Reply(problem), problem
        reply = await self.invoke(
            chat_id,
            sender,
            event_id,
            spec.name,
            lambda ctx: spec.handler(ctx, parsed),
            pressed=pressed,
        )
        return reply, None

    async def invoke(
        self,
        chat_id: str,
        sender: str,
        event_id: int | None,
        command: str,
        call: Callable[[CommandContext], Awaitable[str | Reply]],
        *,
        pressed: bool = False,
    ) -> Reply:
        """Run a command's handler (parsed text, or a tool's typed call) in a context for
        this chat, counted under `command` in the metrics.

        The model's tools come in here with their validated arguments: the same handler a
        person's command runs after parsing, with no command text in between.

        :raises CommandError, Refused: as the handler does.
        """
        ctx = CommandContext(chat_id, sender, self.services, self.router, event_id, pressed)
        started, ok = time.perf_counter(), False
        try:
            result = await call(ctx)
            ok = True
        finally:
            self.services.metrics.observe_command(command, time.perf_counter() - started, ok=ok)
        return result if isinstance(result, Reply) else Reply(result)

    async def handle_command(
        self,
        chat_id: str,
        sender: str,
        text: str,
        *,
        source: str,
        source_id: str | None = None,
        pressed: bool = False,
        thread: str | None = None,
    ) -> Reply:
        """A command from a chat: answer it there, tracing it unless it is introspection.

        `pressed`: it came from a button, which never escalates (a second stop kills when
        typed; pressed, it says the run is already stopping). `thread`: the thread of the
        button's message (a run's): the answer goes there unless it opens its own.
        """
        services = self.services
        text = self.redact(text)  # a no-op when it came through deliver
        try:
            parsed = parse_command(text)
        except CommandError:
            parsed = None
        name = parsed.name if parsed else text.split(maxsplit=1)[0].lstrip("/").lower()
        spec = self.router.find(name)
        if spec is not None and parsed is not None and not spec.is_traced(parsed):
            reply, _ = await self._run_guarded(chat_id, sender, parsed, None, pressed)
            reply = _in(thread, reply)
            await self.send(chat_id, reply, None, traced=False)
            return reply
        how = "Button" if pressed else "Command"
        content = {"chat": chat_id, "sender": sender, "text": text}
        event_id = services.log.log_event(
            source,
            source_id,
            summary=f"{how} from {sender}: {text[:80]}",
            content={**content, "pressed": True} if pressed else content,
        )
        async with services.log.action(event_id, "command", target=f"/{name}") as act:
            reply, error = await self._run_guarded(
                chat_id, sender, parsed or text, event_id, pressed
            )
            act.content = reply.text[:500]
            if error is not None:
                act.fail(error)
        reply = _in(thread, reply)
        await self.send(chat_id, reply, event_id)
        return reply

    async def _run_guarded(
        self,
        chat_id: str,
        sender: str,
        command: str | ParsedCommand,
        event_id: int | None,
        pressed: bool = False,
    ) -> tuple[Reply, str | None]:
        """Run an already-parsed command (or text that did not parse); never raises."""
        try:
            if isinstance(command, ParsedCommand):
                return await self._execute(chat_id, sender, command, event_id, pressed)
            return await self.execute_command(chat_id, sender, command, event_id)
        except (CommandError, Refused) as exc:
            return Reply(str(exc)), str(exc)
        except Exception as exc:
            log.exception("command %r failed", str(command)[:80])
            error = f"{type(exc).__name__}: {exc}"
            return Reply(
                f"Sorry, that failed inside the assistant: {error}. /debug why shows the chain."
            ), error

    # ---- the scheduler's runner (TaskRunner protocol) -----------------------------------

    async def run_task(self, task: Task, event_id: int) -> str:
        """Run a task's `what`: a built-in command, or a prompt for the agent in its own context.

        :raises CommandError: if the command failed or refused (the scheduler reports it).
        """
        if looks_like_command(task.what):
            reply, error = await self.execute_command(
                task.chat_id, "scheduler", task.what, event_id
            )
            if error is not None:
                raise CommandError(error)
            return reply.text
        prompt = _prompt_of(task, self.redact)
        replies = await self.services.agent.respond(task.chat_id, [prompt], event_id)
        return "\n\n".join(replies)

    async def offer(self, chat_id: str, reply: Reply, caused_by: int | None) -> bool:
        """Send a reply whose actions are the point (a confirmation) where the chat's
        platform draws them as buttons; False, sending nothing, where it does not."""
        channel = self._channel_for(chat_id)
        if channel is None or not channel.supports_buttons:
            return False
        # a confirmation goes in the thread of the message the model is answering
        return await self.send(chat_id, _in(self._answering.get(chat_id), reply), caused_by)

    async def notify(self, chat_id: str, text: str, caused_by: int | None) -> None:
        await self.send(chat_id, text, caused_by)

    # ---- conversation ------------------------------------------------------------------

    async def _process_chat(self, chat_id: str) -> None:
        """One batch of a chat's new messages through the agent (called by the queue)."""
        services = self.services
        batch = await self.messages.pending(chat_id)
        if not batch:
            return
        event_id = services.log.log_event(
            "message_batch",
            chat_id,
            summary=f"Processing {len(batch)} message(s) for {chat_id}",
            content={"seqs": [m.seq for m in batch]},
            caused_by=batch[-1].action_id,
        )
        thread = self._answered_in(chat_id, batch[-1].seq)
        self._answering[chat_id] = thread  # where a confirmation asked on the way goes
        try:
            async with services.log.action(event_id, "agent_reply", target=chat_id) as act:
                replies = await services.agent.respond(chat_id, batch, event_id)
                act.content = {"replies": len(replies)}
        except Exception as exc:
            log.exception("agent failed for %s", chat_id)
            replies = [f"Sorry, I could not answer that: {exc}. /debug why shows what happened."]
        finally:
            self._answering.pop(chat_id, None)
        await self.messages.advance_cursor(chat_id, batch[-1].seq)
        for text in replies:
            await self.send(chat_id, Reply(text, thread=thread), event_id)
            await self.messages.store(chat_id, self.settings.assistant_name, text, from_me=True)

    def _answered_in(self, chat_id: str, last: int) -> str | None:
        """The thread a batch's last message was typed in (None: the top level); the
        threads of the batch's messages are forgotten."""
        waiting = self._typed_in.get(chat_id)
        if not waiting:
            return None
        thread = waiting.get(last)
        for seq in [s for s in waiting if s <= last]:
            del waiting[seq]
        if not waiting:
            del self._typed_in[chat_id]
        return thread

    # ---- outgoing ----------------------------------------------------------------------

    async def show_progress(
        self, chat_id: str, text: str, message_id: str | None, thread: str | None = None
    ) -> str | None:
        """Post a live progress message, or edit the one posted before, where the chat's
        platform edits in place; elsewhere nothing (progress is in /status there).

        Returns the message id to edit next time. Edits are not chain actions: they change
        a view, not the state of anything.
        """
        channel = self._channel_for(chat_id)
        if channel is None or not channel.supports_edit:
            return None
        text = self.redact(text)
        try:
            drawn = await self.actions.draw(channel, chat_id, Reply(text, thread=thread))
            if message_id is None:
                return await channel.send_message(chat_id, text, thread=drawn.thread)
            if drawn.thread is not None:  # the edit finds the message in its thread
                edited = await channel.edit_text(chat_id, message_id, text, thread=drawn.thread)
            else:
                edited = await channel.edit_text(chat_id, message_id, text)
            return edited or message_id
        except Exception as exc:
            log.debug("progress message for %s: %s", chat_id, exc)
            return message_id

    async def send(
        self, chat_id: str, reply: str | Reply, caused_by: int | None, *, traced: bool = True
    ) -> bool:
        """Deliver to whichever channel owns the chat; every send is an action, ok or failed.

        Everything said to a chat leaves through here, masked: replies, run reports and
        logs (which quote what a run printed), notices, the model's answers.
        """
        reply = reply if isinstance(reply, Reply) else Reply(reply)
        reply = dataclasses.replace(reply, text=self.redact(reply.text))
        channel = self._channel_for(chat_id)
        if not traced:
            return await self._deliver(channel, chat_id, reply)
        async with self.services.log.action(caused_by, "message_sent", target=chat_id) as act:
            act.content = reply.text[:500]
            if channel is None:
                act.fail(f"no connected channel serves {chat_id}")
                return False
            try:
                call_input = {
                    "chat": chat_id,
                    "chars": len(reply.text),
                    "images": len(reply.images),
                    "actions": [a.command for a in reply.actions],
                }
                async with self.services.log.tool_call(f"{channel.name}.send", call_input):
                    await self._deliver(channel, chat_id, reply, raise_errors=True)
            except Exception as exc:
                act.fail(f"{type(exc).__name__}: {exc}")
                log.warning("sending to %s failed: %s", chat_id, exc)
                return False
        return True

    async def _deliver(
        self, channel: Channel | None, chat_id: str, reply: Reply, *, raise_errors: bool = False
    ) -> bool:
        """Send every part of `reply`; one part that fails does not keep back the others.

        A channel that keeps what it could not deliver (the local outbox) must get the
        images too, or a report read later would lack its plot. The first failure is what
        counts. The text goes with the reply's buttons, under its thread's root.
        """
        if channel is None:
            return False
        drawn = await self.actions.draw(channel, chat_id, reply)
        first: Exception | None = None
        parts: list[Path | None] = [None] if drawn.text else []  # None: the text
        for image in [*parts, *reply.images]:
            try:
                if image is None:
                    sent = await _send_drawn(channel, chat_id, drawn)
                    # sent in a thread where threads do not nest: the thread is the root
                    nests = channel.nested_threads or drawn.thread is None
                    await self.actions.opened(chat_id, reply, sent if nests else drawn.thread)
                elif drawn.thread is not None:
                    await channel.send_image(chat_id, image, thread=drawn.thread)
                else:
                    await channel.send_image(chat_id, image)
            except Exception as exc:
                first = first or exc
        if first is not None:
            if raise_errors:
                raise first
            log.warning("sending to %s failed", chat_id, exc_info=first)
            return False
        return True


def _in(thread: str | None, reply: Reply) -> Reply:
    """`reply` in `thread` (a pressed button's, or the one a command was typed in), unless
    it belongs in a thread itself (a run's) or opens one. A reply that opens a run's
    thread still goes in a thread of the platform's it was asked from: Slack and Discord
    start no thread within a thread, so the run's messages follow it there."""
    if thread is None or reply.thread is not None:
        return reply
    if reply.opens is not None and not thread.startswith(PLATFORM_THREAD):
        return reply
    return dataclasses.replace(reply, thread=thread)


async def _send_drawn(channel: Channel, chat_id: str, drawn: Drawn) -> str | None:
    """Plain `send_text` unless there are buttons or a thread: every channel has it."""
    if not drawn.buttons and drawn.thread is None:
        return await channel.send_text(chat_id, drawn.text)
    return await channel.send_message(
        chat_id, drawn.text, buttons=drawn.buttons, thread=drawn.thread
    )


def _prompt_of(task: Task, redact: Redactor) -> StoredMessage:
    """A scheduled prompt as a one-message conversation: its own context, not the chat's.

    Masked again: a task stored before its secret was configured still sends none.
    """
    return StoredMessage(
        seq=0,
        chat_id=task.chat_id,
        sender="scheduler",
        text=redact(task.what),
        ts=task.created_at,
        from_me=False,
        action_id=None,
    )


async def run_forever(orchestrator: Orchestrator, stop: asyncio.Event) -> None:
    """Serve until `stop` is set (by a signal handler)."""
    async with orchestrator:
        await stop.wait()
