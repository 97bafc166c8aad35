"""The service's HTTP listener: `/healthz`, and any route another part registers.

One aiohttp listener on `settings.http_address` (ASSISTANT_HTTP: `host:port`, loopback
by default; port 0 takes any free port; `off` disables it). It serves operators' tools
(a compose healthcheck, systemd, a load balancer, a Prometheus scrape), never chats, so
it has no authentication: bind it to loopback or to an address only such tools reach.

Routes are added before the listener starts, by whoever owns the handler::

    server = HttpServer.from_settings(settings)      # None when ASSISTANT_HTTP=off
    server.add_get("/metrics", metrics_handler)       # any `async (request) -> Response`
    await server.start()                               # binds; writes http.json
    ...
    await server.aclose()                              # stops; removes http.json

Once bound, the address is written to ASSISTANT_HOME/http.json (mode 0600, like
local-channel.json): `{"host", "port", "url", "pid"}`, so tools and tests find a port
chosen by the system. An address that cannot be bound (taken, not this host's) stops the
start with one line naming it and the setting: a service whose health cannot be asked
would look dead to its supervisor anyway, and saying so at once beats restarts in a loop.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from assistant.channels.local import write_private
from assistant.config import Settings
from assistant.errors import ConfigError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ENDPOINT_FILE = "http.json"
ADDRESS_SHAPE = "host:port (e.g. 127.0.0.1:9477, [::1]:9477; port 0 = any free port) or off"


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a host name: whatever it resolves to


def parse_address(value: str) -> ListenAddress | None:
    """ASSISTANT_HTTP's value: None for "off", else host and port.

    :raises ConfigError: naming the setting, the value and the expected form.
    """
    text = value.strip()
    if text.lower() == "off":
        return None
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"ASSISTANT_HTTP={value!r} is not valid: expected {ADDRESS_SHAPE}")
    if ":" in host:  # IPv6 must be bracketed, or the port is ambiguous
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(
                f"ASSISTANT_HTTP={value!r} is not valid: expected {ADDRESS_SHAPE}"
            ) from None
        if not text.startswith("["):
            raise ConfigError(
                f"ASSISTANT_HTTP={value!r} is not valid: write an IPv6 address in brackets,"
                f" [{host}]:{port_text}"
            )
    return ListenAddress(host, int(port_text))


class HttpServer:
    """The listener; routes are added with `add_get` before `start` (see the module doc)."""

    def __init__(self, address: ListenAddress, endpoint_path: Path) -> None:
        self.requested = address
        self._endpoint_path = endpoint_path
        self._app = web.Application()
        self._runner: web.AppRunner | None = None
        self.address: ListenAddress | None = None  # what was bound, once started

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpServer | None:
        """The listener the settings ask for; None when ASSISTANT_HTTP=off.

        :raises ConfigError: the address is malformed.
        """
        address = parse_address(settings.http_address)
        if address is None:
            return None
        return cls(address, settings.assistant_home / ENDPOINT_FILE)

    @property
    def url(self) -> str:
        bound = self.address or self.requested
        host = f"[{bound.host}]" if ":" in bound.host else bound.host
        return f"http://{host}:{bound.port}"

    def add_get(self, path: str, handler: Handler) -> None:
        """Serve GET (and HEAD) on `path`; only before `start` (aiohttp freezes the router).

        :raises RuntimeError: the listener has started already.
        """
        if self._runner is not None:
            raise RuntimeError(f"route {path} added after the HTTP listener started")
        self._app.router.add_get(path, handler)

    async def start(self) -> None:
        """Bind and publish the address in http.json.

        :raises ConfigError: the address cannot be bound (one line: which, why, what to do).
        """
        runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await runner.setup()
        want = self.requested
        site = web.TCPSite(runner, want.host, want.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            why = os.strerror(exc.errno) if exc.errno else str(exc)  # asyncio's is long
            raise ConfigError(
                f"HTTP listener: cannot listen on {self.url} ({why}); set"
                f" ASSISTANT_HTTP to a free address (port 0 = any free port) or to off"
            ) from None
        self._runner = runner
        port = runner.addresses[0][1] if runner.addresses else want.port
        self.address = ListenAddress(want.host, int(port))
        if not want.is_loopback:
            log.warning(
                "HTTP listener on %s: /healthz and every other route answer anyone who can"
                " reach that address, without authentication",
                self.url,
            )
        write_private(
            self._endpoint_path,
            {
                "host": self.address.host,
                "port": self.address.port,
                "url": self.url,
                "pid": os.getpid(),
            },
        )
        log.info("HTTP listener on %s (routes: %s)", self.url, ", ".join(self.paths()))

    def paths(self) -> list[str]:
        return sorted({r.resource.canonical for r in self._app.router.routes() if r.resource})

    async def aclose(self) -> None:
        """Stop answering (open requests are cut) and remove http.json; idempotent."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self._endpoint_path.unlink()
        await runner.cleanup()
