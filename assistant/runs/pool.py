"""A pool of GPU hosts: several Docker engines, each with its GPUs, labels and health.

`PooledRunner` is one `Runner` over many `DockerRunner`s (hosts.toml, runs/pool_config.py):
each call goes to the host of the run it is about. A run's handle names its host
(`gpu2/<container id>`, and the run's `host` column), so the monitor, the signals and a
restart find it there without knowing of pools. `HostPool` is the pool as the manager
and the commands see it (`Capabilities.hosts`, runs/placement.py): it places a queued run
on a host and says what is known of each.

Placement, oldest run first: the hosts a run may go to are those `host=` names (a host or
a label; any host without it), the first host for a benchmark that starts its own server,
hosts sharing this host's folders for a declared recipe with a working dir, and the host
it ran on for a resume (its checkpoints are there). Of those that answer and hold the
run's image, it takes the one with the fewest free GPUs that still has enough (so a big
run finds a whole host later), ties in the file's order. A GPU run that fits nowhere holds
back later GPU runs on the hosts it waits for: first come, first served per host.

Health: each host is probed every ASSISTANT_HOST_PROBE seconds (a bounded ping), and
every call's outcome counts too. While a host is silent its live runs are *unknown*, not
failed: the monitor settles nothing and reports no stall (`RunnerState.silent`), and
/status, /runs and /run show say "unknown: host gpu2 not answering since 14:03". When it
answers again they are followed as before: a container still there is the run going on
(adopted), one gone settles from what the run left (result.json), else lost, as after a
restart. Past ASSISTANT_HOST_LOST_AFTER seconds of silence they are given up as lost with
that reason; their containers are removed when the host answers again.

GPUs are configured per host (`gpus = [0, 1]`) or found through the engine (`"auto"`: a
probe container running nvidia-smi where the engine has the NVIDIA runtime). On an engine
without that runtime, configured GPUs are counted for placement only: containers get no
device request, and /status says so.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TypeVar
from zoneinfo import ZoneInfo

import docker
from docker.types import DeviceRequest

from assistant.background import cancel
from assistant.config import Settings
from assistant.errors import CapacityError, ConfigError, EngineUnavailable, NotFoundError
from assistant.runs.docker_runner import DockerRunner
from assistant.runs.lifecycle import LIVE
from assistant.runs.placement import Place
from assistant.runs.pool_config import HostsFile
from assistant.runs.runner import (
    Capabilities,
    ContainerPaths,
    LaunchRequest,
    RunHandle,
    RunnerKind,
    RunnerState,
)
from storage.runs import RunRecord

log = logging.getLogger(__name__)

SEP = "/"  # between a host's name and the container id in a pooled handle
PING_S = 2.0
GPU_PROBE_S = 90.0

Callback = Callable[[str], Awaitable[None]]  # given the name of the host that answers
T = TypeVar("T")


def split_ref(ref: str) -> tuple[str, str]:
    """`gpu2/abc...` -> ("gpu2", "abc..."); a handle from before the pool -> ("", ref)."""
    host, sep, inner = ref.partition(SEP)
    return (host, inner) if sep else ("", ref)


@dataclass
class Host:
    """One engine of the pool, and what is known of it."""

    name: str
    runner: DockerRunner
    gpus: list[int]
    labels: tuple[str, ...] = ()
    gpus_auto: bool = False
    gpu_note: str | None = None  # how an "auto" inventory was found, or why it was not
    down_since: float | None = None  # wall clock of the first unanswered call or probe
    why: str | None = None
    images: dict[str, bool] = field(default_factory=dict)  # the last answer per image
    abandoned: set[str] = field(default_factory=set)  # containers of runs given up as lost

    @property
    def up(self) -> bool:
        return self.down_since is None

    @property
    def shares_folders(self) -> bool:
        """The engine mounts this host's run dirs (not an ssh:// one)."""
        return self.runner.remote is None

    @property
    def counted_only(self) -> bool:
        """GPUs configured on an engine without the NVIDIA runtime: for placement only."""
        return (
            bool(self.gpus)
            and self.runner.engine.version is not None
            and not (self.runner.engine.gpu_runtime)
        )

    def matches(self, asked: str) -> bool:
        return asked in ("", self.name) or asked in self.labels


class HostPool:
    """The pool as the manager and the commands see it (the `Hosts` protocol)."""

    def __init__(
        self, hosts: list[Host], *, source: Path, lost_after_s: float, zone: ZoneInfo
    ) -> None:
        self.hosts = hosts
        self.source = source
        self.lost_after_s = lost_after_s
        self.zone = zone
        self._callbacks: list[Callback] = []
        self._back_tasks: set[asyncio.Task[None]] = set()

    def get(self, name: str) -> Host | None:
        return next((h for h in self.hosts if h.name == name), None)

    # ---- health --------------------------------------------------------------------------

    def failed(self, host: Host, exc: BaseException) -> None:
        why = str(exc).split(";")[0].strip()[:200]
        if host.up:
            host.down_since = time.time()
            log.warning("host %s does not answer: %s", host.name, why)
        host.why = why

    def answered(self, host: Host) -> None:
        if host.up:
            return
        silent = time.time() - (host.down_since or time.time())
        log.info("host %s answers again after %.0f s", host.name, silent)
        host.down_since, host.why = None, None
        task = asyncio.create_task(self._back(host), name=f"host-back-{host.name}")
        self._back_tasks.add(task)
        task.add_done_callback(self._back_tasks.discard)

    async def _back(self, host: Host) -> None:
        """A host answers again: remove what was given up there, learn its GPUs if they
        were never found, and let queued runs start on it."""
        for ref in sorted(host.abandoned):
            try:
                await host.runner.kill(RunHandle("docker", ref, ""))
                await host.runner.remove(RunHandle("docker", ref, ""))
                host.abandoned.discard(ref)
                log.warning("host %s: removed container %s of a run given up", host.name, ref)
            except Exception as exc:  # it stays in the set: tried again next time
                log.warning("host %s: could not remove container %s: %s", host.name, ref, exc)
        if host.gpus_auto and host.gpu_note is None:
            await probe_gpus(host)
        for callback in self._callbacks:
            try:
                await callback(host.name)
            except Exception:
                log.exception("after host %s answered again", host.name)

    def when_back(self, callback: Callback) -> None:
        self._callbacks.append(callback)

    def since(self, host: Host) -> str:
        when = datetime.fromtimestamp(host.down_since or time.time(), self.zone)
        return when.strftime("%H:%M")

    def unknown(self, run: RunRecord) -> str | None:
        host = self.get(run.host) if run.host else None
        if host is None or host.up or run.state not in LIVE:
            return None
        return f"unknown: host {host.name} not answering since {self.since(host)}"

    # ---- placement -----------------------------------------------------------------------

    @property
    def gpu_count(self) -> int:
        return max((len(h.gpus) for h in self.hosts), default=0)

    def check(self, gpus: int, host: str | None) -> None:
        asked = host or ""
        matching = [h for h in self.hosts if h.matches(asked)]
        if not matching:
            names = ", ".join(h.name for h in self.hosts)
            labels = sorted({label for h in self.hosts for label in h.labels})
            raise NotFoundError(
                f"no host or label {asked!r} in the pool (hosts: {names}"
                + (f"; labels: {', '.join(labels)}" if labels else "")
                + ")"
            )
        most = max(len(h.gpus) for h in matching)
        if gpus > most:
            where = f"host {asked}" if asked else "the largest host"
            raise CapacityError(
                f"the run asks for {gpus} GPU(s) but {where} has {most}"
                + ("" if most else f" (give a host GPUs in {self.source}, or gpus=0)")
            )

    def eligible(self, run: RunRecord) -> list[Host]:
        """The hosts `run` may go to at all (answering or not)."""
        if run.host and run.started_at is not None:
            host = self.get(run.host)  # a resume: its checkpoints are there
            return [host] if host is not None else []
        hosts = [h for h in self.hosts if h.matches(run.host_asked)]
        if run.server is not None:
            hosts = hosts[:1] if hosts and hosts[0] is self.hosts[0] else []
        if run.definition is not None and run.definition.get("workdir"):
            hosts = [h for h in hosts if h.shares_folders]
        return hosts

    def plan(self, live: list[RunRecord], max_cpu_runs: int) -> PoolPlan:
        return PoolPlan(self, live, max_cpu_runs)

    def waiting(self, run: RunRecord, live: list[RunRecord]) -> str | None:
        if run.state != "queued":
            return None
        hosts = self.eligible(run)
        if not hosts:
            return f"no host of the pool may take it (host={run.host_asked or run.host})"
        busy = _busy(live)
        parts = []
        for h in hosts:
            if not h.up:
                parts.append(f"{h.name} not answering since {self.since(h)}")
            elif h.images.get(run.image) is False:
                parts.append(f"{h.name} lacks image {run.image}")
            elif run.gpus_wanted:
                free = len([g for g in h.gpus if g not in busy[h.name]])
                parts.append(f"{h.name} {free}/{len(h.gpus)} GPUs free")
            else:
                parts.append(f"{h.name} CPU slots full")
        want = f"{run.gpus_wanted} GPU(s)" if run.gpus_wanted else "a CPU slot"
        return f"waiting for {want}: " + ", ".join(parts)

    def status_lines(self, runs: list[RunRecord]) -> list[str]:
        live = [r for r in runs if r.state in LIVE]
        busy = _busy(live)
        lines = [f"Hosts ({len(self.hosts)}, {self.source}):"]
        for h in self.hosts:
            on = [r for r in live if r.host == h.name]
            used = sorted(busy[h.name])
            free = [g for g in h.gpus if g not in busy[h.name]]
            state = "up" if h.up else f"not answering since {self.since(h)} ({h.why})"
            gpus = f"GPUs {len(free)} free, {len(used)} used of {len(h.gpus)}"
            if h.counted_only:
                gpus += " (counted for placement only: no GPU runtime)"
            if h.gpu_note:
                gpus += f" ({h.gpu_note})"
            mark = "" if h.up else " unknown"
            names = ", ".join(f"{r.id}{mark}" for r in on) or "none"
            line = f"  {h.name}: {state} · {h.runner.base_url} · {gpus} · runs: {names}"
            if h.labels:
                line += f" · labels {', '.join(h.labels)}"
            lines.append(line)
        return lines


class _Busy(dict[str, set[int]]):
    """GPUs in use per host; a host with none has an empty set."""

    def __missing__(self, key: str) -> set[int]:
        return set()


def _busy(live: list[RunRecord]) -> _Busy:
    busy = _Busy()
    for run in live:
        busy.setdefault(run.host, set()).update(run.gpus)
    return busy


class PoolPlan:
    """One dispatch pass over the pool (see the module docstring for the rules)."""

    def __init__(self, pool: HostPool, live: list[RunRecord], max_cpu_runs: int) -> None:
        busy = _busy(live)
        self.pool = pool
        self.free = {h.name: [g for g in h.gpus if g not in busy[h.name]] for h in pool.hosts}
        self.cpu = Counter(r.host for r in live if r.gpus_wanted == 0)
        self.max_cpu = max_cpu_runs
        self.held: set[str] = set()  # hosts an earlier GPU run waits for

    def take(self, run: RunRecord) -> Place | None:
        eligible = self.pool.eligible(run)
        hosts = [h for h in eligible if h.up and h.images.get(run.image) is not False]
        if run.gpus_wanted == 0:
            for h in hosts:
                if self.cpu[h.name] < self.max_cpu:
                    self.cpu[h.name] += 1
                    return Place(h.name, [])
            return None
        want = run.gpus_wanted
        fits = [h for h in hosts if h.name not in self.held and len(self.free[h.name]) >= want]
        if not fits:
            self.held.update(h.name for h in eligible if len(h.gpus) >= want)
            return None
        best = min(fits, key=lambda h: len(self.free[h.name]))  # the first of equals
        gpus, self.free[best.name] = self.free[best.name][:want], self.free[best.name][want:]
        return Place(best.name, gpus)


# ---- GPUs through the engine --------------------------------------------------------------


async def probe_gpus(host: Host) -> None:
    """An "auto" inventory: the GPUs a probe container sees (nvidia-smi through the NVIDIA
    runtime, which mounts the tool into any image); none without that runtime."""
    engine = host.runner.engine
    if not engine.gpu_runtime:
        host.gpus, host.gpu_note = [], "auto: the engine has no NVIDIA runtime"
        return
    image = host.runner.image

    def run() -> list[int]:
        client = docker.DockerClient(base_url=engine.url, timeout=GPU_PROBE_S)
        try:
            out = client.containers.run(
                image,
                ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                device_requests=[DeviceRequest(count=-1, capabilities=[["gpu", "utility"]])],
                network_mode="none",
                remove=True,
                labels={"assistant.probe": "gpus"},
            )
        finally:
            client.close()
        return sorted(int(word) for word in bytes(out).decode().split())

    try:
        async with asyncio.timeout(GPU_PROBE_S + 5):
            host.gpus = await asyncio.to_thread(run)
        host.gpu_note = f"auto: {len(host.gpus)} found by nvidia-smi"
    except Exception as exc:  # no GPU is a safe inventory: GPU runs wait, and /status says why
        host.gpus = []
        host.gpu_note = f"auto: the probe failed: {str(exc)[:120]}"
        log.warning("host %s: could not list its GPUs: %s", host.name, exc)


# ---- the runner -----------------------------------------------------------------------


class PooledImages:
    """The `ImageStore` of the pool: an image is ready if an answering host holds it (the
    plan then takes only such hosts); a build makes it on each answering host lacking it."""

    def __init__(self, pool: HostPool) -> None:
        self.pool = pool

    async def ready(self, image: str) -> bool:
        up = [h for h in self.pool.hosts if h.up]
        if not up:
            raise EngineUnavailable(_nobody(self.pool))
        found = await asyncio.gather(*(self._has(h, image) for h in up))
        if not any(h.up for h in up):
            raise EngineUnavailable(_nobody(self.pool))
        return any(found)

    async def _has(self, host: Host, image: str) -> bool:
        images = host.runner.capabilities.images
        assert images is not None
        try:
            host.images[image] = await images.ready(image)
        except EngineUnavailable as exc:
            self.pool.failed(host, exc)
            return False
        self.pool.answered(host)
        return host.images[image]

    async def build(self, image: str, on_line: Callable[[str], Awaitable[None]]) -> None:
        for host in self.pool.hosts:
            images = host.runner.capabilities.images
            if host.up and host.images.get(image) is False and images is not None:
                await on_line(f"== on host {host.name}")
                await images.build(image, on_line)
                host.images[image] = True


def _nobody(pool: HostPool) -> str:
    whys = "; ".join(f"{h.name}: {h.why or 'not answering'}" for h in pool.hosts)
    return f"no host of the pool answers ({whys})"


class PooledRunner:
    """A `Runner` whose calls go to the host of the run they are about."""

    kind: RunnerKind = "docker"

    def __init__(self, pool: HostPool, probe_s: float = 5.0) -> None:
        self.pool = pool
        self.probe_s = probe_s
        first = pool.hosts[0].runner
        self.capabilities = Capabilities(
            paths=ContainerPaths(first.run_mount),
            images=PooledImages(pool),
            servers=first.capabilities.servers,  # benchmarks with a server: the first host
            network_isolation=True,
            resource_limits=True,
            run_dir_shared=all(h.shares_folders for h in pool.hosts),
            hosts=pool,
        )
        self._watch: asyncio.Task[None] | None = None

    @property
    def description(self) -> str:
        up = sum(1 for h in self.pool.hosts if h.up)
        names = ", ".join(h.name for h in self.pool.hosts)
        return f"docker pool of {len(self.pool.hosts)} hosts ({names}; {up} answering)"

    # ---- start, health and stop ------------------------------------------------------------

    async def connect(self) -> None:
        """Reach every host once (a silent one is marked down, not fatal), learn "auto"
        inventories, and start the health probes.

        :raises ConfigError: a host's engine would mount ASSISTANT_HOME from elsewhere.
        :raises EngineUnavailable: no host answers at all.
        """
        await asyncio.gather(*(self._probe(h, first=True) for h in self.pool.hosts))
        if not any(h.up for h in self.pool.hosts):
            raise EngineUnavailable(_nobody(self.pool))
        for h in self.pool.hosts:
            if h.up and h.gpus_auto:
                await probe_gpus(h)
            if h.counted_only:
                log.warning(
                    "host %s: its engine has no NVIDIA runtime; GPUs %s are counted for"
                    " placement only (containers get no GPU)",
                    h.name,
                    h.gpus,
                )
        self._watch = asyncio.create_task(self._probe_loop(), name="host-probes")

    async def _probe(self, host: Host, *, first: bool = False) -> None:
        try:
            async with asyncio.timeout(host.runner.engine.bound_s + PING_S + 1):
                await host.runner.connect()
                await host.runner.ping(PING_S)
        except ConfigError:
            if first:
                raise
            log.exception("host %s", host.name)
        except Exception as exc:
            if first:
                log.warning("host %s does not answer at start: %s", host.name, exc)
            self.pool.failed(host, exc)
            return
        self.pool.answered(host)

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.probe_s)
            await asyncio.gather(*(self._probe(h) for h in self.pool.hosts))

    async def aclose(self) -> None:
        await cancel(self._watch)
        self._watch = None
        for task in list(self.pool._back_tasks):
            await cancel(task)
        for h in self.pool.hosts:
            await h.runner.aclose()

    # ---- routed calls ---------------------------------------------------------------------

    def _route(self, handle: RunHandle) -> tuple[Host | None, RunHandle]:
        name, ref = split_ref(handle.ref)
        host = self.pool.get(name) if name else self.pool.hosts[0]
        return host, RunHandle(handle.runner, ref, handle.run_id)

    def _silent(self, host: Host) -> EngineUnavailable:
        # the host's name first and no engine address: what a waiting run shows
        # (engine_watch.silence) names the host; /status says why
        return EngineUnavailable(f"host {host.name} does not answer since {self.pool.since(host)}")

    async def launch(self, request: LaunchRequest) -> RunHandle:
        host = self.pool.get(request.host) or self.pool.hosts[0]
        if not host.up:
            raise self._silent(host)
        if host.counted_only:
            request = replace(request, gpus=())
        labels = {**request.labels, "assistant.host": host.name}
        try:
            handle = await host.runner.launch(replace(request, labels=labels))
        except EngineUnavailable as exc:
            self.pool.failed(host, exc)
            raise
        self.pool.answered(host)
        return replace(handle, ref=f"{host.name}{SEP}{handle.ref}")

    async def state(self, handle: RunHandle) -> RunnerState:
        host, inner = self._route(handle)
        if host is None:
            return RunnerState(
                running=False,
                gone=True,
                silent=f"host {split_ref(handle.ref)[0]} is no longer in {self.pool.source}",
            )
        if host.up:
            try:
                found = await host.runner.state(inner)
            except EngineUnavailable as exc:
                self.pool.failed(host, exc)
            else:
                self.pool.answered(host)
                return found
        silent_s = time.time() - (host.down_since or time.time())
        since = self.pool.since(host)
        if silent_s < self.pool.lost_after_s:
            return RunnerState(running=True, silent=f"host {host.name} not answering since {since}")
        host.abandoned.add(inner.ref)
        return RunnerState(
            running=False,
            gone=True,
            silent=f"host {host.name} has not answered since {since} ({host.why}); given up"
            f" after {self.pool.lost_after_s:g} s (ASSISTANT_HOST_LOST_AFTER)",
        )

    async def signal_stop(self, handle: RunHandle) -> None:
        host, inner = self._route(handle)
        if host is None:
            return
        await self._routed(host, host.runner.signal_stop(inner))

    async def kill(self, handle: RunHandle) -> None:
        host, inner = self._route(handle)
        if host is None:
            return
        await self._routed(host, host.runner.kill(inner))

    async def logs_tail(self, handle: RunHandle, lines: int) -> str:
        host, inner = self._route(handle)
        if host is None or not host.up:
            return ""
        return await self._routed(host, host.runner.logs_tail(inner, lines))

    async def remove(self, handle: RunHandle) -> None:
        host, inner = self._route(handle)
        if host is None:
            return
        if not host.up:
            host.abandoned.add(inner.ref)  # removed when it answers again
            return
        await self._routed(host, host.runner.remove(inner))

    async def _routed(self, host: Host, call: Awaitable[T]) -> T:
        if not host.up:
            if asyncio.iscoroutine(call):
                call.close()
            raise self._silent(host)
        try:
            result = await call
        except EngineUnavailable as exc:
            self.pool.failed(host, exc)
            raise
        self.pool.answered(host)
        return result

    async def list_managed(self) -> list[RunHandle]:
        """Runs of this assistant on every answering host; a silent host's are left for
        when it answers. :raises EngineUnavailable: no host answers."""
        found: list[RunHandle] = []
        answered = False
        for host in self.pool.hosts:
            if not host.up:
                continue
            try:
                handles = await host.runner.list_managed()
            except EngineUnavailable as exc:
                self.pool.failed(host, exc)
                continue
            answered = True
            self.pool.answered(host)
            found.extend(replace(h, ref=f"{host.name}{SEP}{h.ref}") for h in handles)
        if not answered:
            raise EngineUnavailable(_nobody(self.pool))
        return found

    async def ping(self, timeout_s: float) -> None:
        """Healthy while any host answers; /status lists each host's own state."""
        results = await asyncio.gather(
            *(h.runner.ping(timeout_s) for h in self.pool.hosts), return_exceptions=True
        )
        for host, result in zip(self.pool.hosts, results, strict=True):
            if isinstance(result, BaseException):
                self.pool.failed(host, result)
            else:
                self.pool.answered(host)
        if all(isinstance(r, BaseException) for r in results):
            raise EngineUnavailable(_nobody(self.pool))


def build_pool(
    hosts_file: HostsFile,
    *,
    source: Path,
    image: str,
    instance: str,
    run_uid: int,
    home: Path,
    host_home: Path | None,
    lost_after_s: float,
    zone: ZoneInfo,
) -> HostPool:
    """The pool as hosts.toml describes it (nothing is reached yet)."""
    hosts = []
    for name, entry in hosts_file.hosts.items():
        runner = DockerRunner(
            entry.engine,
            image=image,
            instance=instance,
            run_uid=run_uid,
            home=home,
            host_home=host_home,
        )
        gpus = list(entry.gpus) if isinstance(entry.gpus, list) else []
        hosts.append(
            Host(
                name=name,
                runner=runner,
                gpus=gpus,
                labels=tuple(entry.labels),
                gpus_auto=entry.gpus == "auto",
            )
        )
    return HostPool(hosts, source=source, lost_after_s=lost_after_s, zone=zone)


async def pool_runner(settings: Settings, hosts: HostsFile) -> PooledRunner:
    """The engines of hosts.toml as one runner, each reached once.

    :raises ConfigError: ASSISTANT_RUNNER other than auto or docker beside a pool, a host's
        engine that would mount ASSISTANT_HOME from elsewhere, or no host answering.
    """
    path = settings.hosts_path
    if settings.runner not in ("auto", "docker"):
        raise ConfigError(
            f"ASSISTANT_RUNNER={settings.runner}, but {path} declares a pool of Docker hosts;"
            " remove one of the two"
        )
    if settings.docker_host:
        log.warning("DOCKER_HOST=%s is not used: %s names the engines", settings.docker_host, path)
    home = settings.assistant_home
    pool = build_pool(
        hosts,
        source=path,
        image=settings.run_image,
        # the fingerprint choose_runner gives a single engine's containers
        instance=hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12],
        run_uid=settings.run_uid,
        home=home,
        host_home=settings.host_home,
        lost_after_s=settings.host_lost_after_s,
        zone=settings.zone,
    )
    runner = PooledRunner(pool, probe_s=settings.host_probe_s)
    try:
        await runner.connect()
    except EngineUnavailable as exc:
        await runner.aclose()
        raise ConfigError(
            f"{path}: {exc}; check each engine with DOCKER_HOST=<engine> docker info as this"
            " service's user"
        ) from None
    except BaseException:
        await runner.aclose()
        raise
    return runner
