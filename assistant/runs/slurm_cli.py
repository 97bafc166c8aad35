"""Bounded, parsed calls to Slurm's commands: sbatch, squeue, sacct, scontrol, scancel, sinfo.

Everything the assistant asks a Slurm cluster goes through the client commands of the
machine it runs on (a login node, or any host with the cluster's `slurm.conf` and munge
key), never through slurmrestd: they are what an admin already has and checks with.

- Every call is a subprocess with argv (no shell), the service's environment (so
  `SLURM_CONF` picks the cluster), and a bound (`CALL_S`). A command that does not finish
  in time, or says it cannot reach the controller, raises `EngineUnavailable` naming the
  cluster; a command that answered "no" (sbatch refusing a job) raises `SlurmRefused`
  with Slurm's own words.
- Jobs are read with `squeue --json` where the installed Slurm has it (the openapi
  plugins, 21.08 on; Debian 12's 22.05 has them), which lists every job the controller
  still knows, ended ones included for `MinJobAge` (300 s by default). Elsewhere
  `scontrol show job --oneliner` gives the same fields as key=value. One listing serves
  all jobs asked for within `LIST_TTL_S`, so a monitor pass over N runs costs one call.
- A job the controller forgot (ended longer than `MinJobAge` ago) is asked of `sacct`
  where accounting is configured (`AccountingStorageType` is not `none`); without it,
  the caller reads the run's own result (what the run dir says is the truth then).
- `cluster_summary()` is what /status shows: partitions, nodes idle/allocated/down,
  GPUs free, from `sinfo`.

`job_state(job_id)` and `cluster_summary()` are the two calls other parts (a watch on a
job launched elsewhere) use; the Slurm runner uses the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from assistant.errors import EngineUnavailable, RunStartError

CALL_S = 10.0  # one client command; a loaded controller answers in well under a second
LIST_TTL_S = 1.0  # a job listing serves every question asked within this
OUTPUT_LIMIT = 64 * 1024 * 1024  # of one command's output (a listing of a big cluster)

# Job states that will not change any more (squeue/scontrol/sacct spell them alike).
ENDED_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "PREEMPTED",  # ended by preemption (PreemptMode=CANCEL); a requeued job is PENDING
        "REVOKED",
        "SPECIAL_EXIT",
    }
)
# What the controller says when it cannot be reached: the cluster is down, not the job.
_UNREACHABLE = re.compile(
    r"Unable to contact slurm controller|Socket timed out|Connection refused|"
    r"Communication connection failure|Zero Bytes were transmitted|"
    r"Could not establish a configuration source|Slurm backup controller in standby|"
    r"Munge|munge",
)


class SlurmRefused(RunStartError):
    """A Slurm command answered "no" (a job it will not take, an id it does not know)."""


@dataclass(frozen=True)
class SlurmJob:
    """One job as the controller (or accounting) sees it; states are Slurm's words."""

    job_id: str
    name: str
    state: str  # PENDING, RUNNING, COMPLETING, COMPLETED, FAILED, TIMEOUT, CANCELLED, ...
    reason: str | None  # why it waits or ended: Resources, Priority, BeginTime, ...; None
    exit_code: int | None  # the batch script's exit status (None: not ended, or unknown)
    signal: int | None = None  # the signal that ended it, if one did
    restarts: int = 0  # times it was requeued (preemption, `scontrol requeue`)
    comment: str = ""
    partition: str = ""
    nodes: str = ""  # the nodes it runs on (empty while pending)
    user: str = ""
    time_limit_min: int | None = None  # None: unlimited or unknown
    gres: str = ""  # what it asked per node, e.g. "gres:gpu:2"
    stdout: str = ""
    submit_time: float | None = None  # unix seconds
    start_time: float | None = None
    end_time: float | None = None
    source: str = "squeue"  # squeue, scontrol or sacct

    @property
    def ended(self) -> bool:
        return self.state in ENDED_STATES

    @property
    def pending(self) -> bool:
        return self.state == "PENDING"

    @property
    def waiting(self) -> str | None:
        """What a pending job waits for ("Resources", "Priority", ...); None otherwise."""
        if not self.pending:
            return None
        return self.reason or "pending"

    @property
    def gpus(self) -> int:
        """GPUs it asked for per node (0 when none)."""
        return gres_count(self.gres, "gpu")


@dataclass(frozen=True)
class NodeLine:
    name: str
    partitions: tuple[str, ...]
    state: str  # idle, allocated, mixed, down, drained, ... (sinfo's long form)
    gpus: int
    gpus_used: int

    @property
    def kind(self) -> str:
        """idle, allocated (mixed counts: something runs there) or down."""
        base = self.state.rstrip("*~#!%$@^-+").split("+")[0]
        if base in ("idle",):
            return "idle"
        if base in ("allocated", "mixed", "completing"):
            return "allocated"
        if base in ("down", "drained", "draining", "fail", "failing", "inval", "unknown"):
            return "down"
        return "other"


@dataclass(frozen=True)
class PartitionLine:
    name: str
    default: bool
    up: bool
    max_time: str  # sinfo's words: "1:00:00", "infinite"
    nodes: dict[str, int] = field(default_factory=dict)  # idle / allocated / down / other
    gpus: int = 0
    gpus_used: int = 0

    @property
    def gpus_free(self) -> int:
        return max(0, self.gpus - self.gpus_used)


@dataclass(frozen=True)
class ClusterSummary:
    cluster: str
    partitions: tuple[PartitionLine, ...]
    nodes: tuple[NodeLine, ...]

    def lines(self) -> list[str]:
        """/status's lines: a partition a line, then nothing else (jobs are the runner's)."""
        out = []
        for part in self.partitions:
            counts = ", ".join(
                f"{n} {kind}"
                for kind in ("idle", "allocated", "down", "other")
                if (n := part.nodes.get(kind, 0))
            )
            flags = ("default, " if part.default else "") + ("up" if part.up else "DOWN")
            gpus = f" · GPUs {part.gpus_free}/{part.gpus} free" if part.gpus else ""
            out.append(
                f"  {part.name} ({flags}, max {part.max_time}): nodes {counts or 'none'}{gpus}"
            )
        return out


def gres_count(text: str, name: str) -> int:
    """How many of GRES `name` a gres string holds: "gpu:4", "gres:gpu:a100:2(IDX:0-1)",
    "gpu:2,shard:8" (several entries add up); 0 when none."""
    total = 0
    for entry in re.split(r",(?![^()]*\))", text or ""):
        parts = re.sub(r"\(.*?\)", "", entry).strip().split(":")
        if parts and parts[0] == "gres":
            parts = parts[1:]
        if not parts or parts[0] != name:
            continue
        with contextlib.suppress(ValueError):
            total += int(parts[-1]) if len(parts) > 1 else 1
    return total


class SlurmCli:
    """The client commands of one cluster, each call bounded; see the module docstring.

    :param env: the environment the commands get (None: the service's own; SLURM_CONF
        in it picks the cluster).
    :param bin_dir: where sbatch & co. live (None: PATH).
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        bin_dir: str | None = None,
        *,
        call_s: float = CALL_S,
        use_json: bool | None = None,
    ) -> None:
        self._env = dict(env) if env is not None else None
        self._bin_dir = bin_dir
        self.call_s = call_s
        self.use_json = use_json  # None: found out on the first listing
        self._listing: tuple[float, dict[str, SlurmJob]] | None = None
        self._listing_lock = asyncio.Lock()
        self._accounting: bool | None = None
        self.cluster = os.environ.get("SLURM_CLUSTERS") or "the Slurm cluster"

    @property
    def where(self) -> str:
        conf = (self._env if self._env is not None else os.environ).get("SLURM_CONF")
        return conf or "the cluster of /etc/slurm/slurm.conf"

    # ---- the calls ---------------------------------------------------------------------

    async def run(self, *argv: str, stdin: bytes | None = None) -> str:
        """One client command's stdout.

        :raises EngineUnavailable: it did not finish in `call_s`, is missing, or could not
            reach the controller.
        :raises SlurmRefused: it answered with an error of its own.
        """
        command = argv[0]
        path = os.path.join(self._bin_dir, command) if self._bin_dir else command
        try:
            proc = await asyncio.create_subprocess_exec(
                path,
                *argv[1:],
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env,
                limit=OUTPUT_LIMIT,
            )
        except OSError as exc:
            raise self._unavailable(command, f"cannot run {path}: {exc.strerror or exc}") from None
        try:
            async with asyncio.timeout(self.call_s):
                out, err = await proc.communicate(stdin)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise self._unavailable(command, f"no answer within {self.call_s:g} s") from None
        text = err.decode(errors="replace").strip()
        if proc.returncode != 0:
            if _UNREACHABLE.search(text):
                raise self._unavailable(command, _first_error(text))
            raise SlurmRefused(f"{command}: {_first_error(text) or f'exit {proc.returncode}'}")
        return out.decode(errors="replace")

    def _unavailable(self, command: str, why: str) -> EngineUnavailable:
        return EngineUnavailable(f"no Slurm controller answers at {self.where} ({command}: {why})")

    async def ping(self) -> None:
        """The controller answers (`scontrol ping` says UP).

        :raises EngineUnavailable: it does not.
        """
        try:
            out = await self.run("scontrol", "ping")
        except SlurmRefused:  # exit 1: "Slurmctld(primary) at host is DOWN"
            out = ""
        if "UP" not in out:
            raise self._unavailable("scontrol ping", out.strip().splitlines()[0] if out else "?")

    async def submit(self, argv: Sequence[str], script: str) -> str:
        """`sbatch --parsable ARGS` with the script on stdin; the new job's id.

        :raises SlurmRefused: sbatch refused the job (Slurm's reason in the message).
        """
        out = await self.run("sbatch", "--parsable", *argv, stdin=script.encode())
        job_id = out.strip().split(";")[0]  # "123" or "123;cluster"
        if not job_id.isdigit():
            raise SlurmRefused(f"sbatch said {out.strip()[:200]!r}, not a job id")
        self._listing = None  # the next listing has it
        return job_id

    async def cancel(self, job_id: str, *, signal: str | None = None, batch: bool = False) -> None:
        """`scancel`: the job ends (or gets `signal`; `batch`: only its batch script's
        process, not its steps). A job already over is no error."""
        argv = ["scancel"]
        if signal:
            argv.append(f"--signal={signal}")
        if batch:
            argv.append("--batch")
        try:
            await self.run(*argv, job_id)
        except SlurmRefused as exc:
            if not re.search(r"already completing or completed|Invalid job id", str(exc)):
                raise
        self._listing = None

    async def requeue(self, job_id: str) -> None:
        await self.run("scontrol", "requeue", job_id)
        self._listing = None

    # ---- jobs --------------------------------------------------------------------------

    async def jobs(self, *, fresh: bool = False) -> dict[str, SlurmJob]:
        """Every job the controller knows (ended ones for MinJobAge), by id."""
        async with self._listing_lock:
            now = time.monotonic()
            if not fresh and self._listing is not None and now - self._listing[0] < LIST_TTL_S:
                return self._listing[1]
            found = await self._list()
            self._listing = (time.monotonic(), found)
            return found

    async def _list(self) -> dict[str, SlurmJob]:
        if self.use_json is not False:
            try:
                out = await self.run("squeue", "--json")
                problem = json_errors(out)
                if problem:  # squeue exits 0 with the controller unreachable
                    raise self._unavailable("squeue", problem)
                jobs = parse_squeue_json(out)
                self.use_json = True
                return jobs
            except (SlurmRefused, ValueError):
                if self.use_json:  # it worked before: a real refusal
                    raise
                self.use_json = False  # no openapi plugin here: key=value instead
        out = await self.run("scontrol", "show", "job", "--oneliner")
        return parse_scontrol_jobs(out)

    async def job_state(self, job_id: str) -> SlurmJob | None:
        """The job as the controller knows it, else as accounting does; None: neither
        knows it (never existed, or ended long ago on a cluster without accounting)."""
        job = (await self.jobs()).get(str(job_id))
        if job is not None:
            return job
        return await self.accounted(str(job_id))

    async def accounting(self) -> bool:
        """Whether sacct can answer (AccountingStorageType is not none)."""
        if self._accounting is None:
            out = await self.run("scontrol", "show", "config")
            found = re.search(r"^AccountingStorageType\s*=\s*(\S+)", out, re.M)
            self._accounting = found is not None and "none" not in found.group(1)
        return self._accounting

    async def accounted(self, job_id: str) -> SlurmJob | None:
        """What accounting kept of a job (sacct); None without accounting or record."""
        if not await self.accounting():
            return None
        fields = "JobIDRaw,JobName,State,ExitCode,Reason,Comment,Partition,NodeList,User"
        fields += ",Timelimit,Submit,Start,End"
        out = await self.run(
            "sacct",
            "--noheader",
            "--parsable2",
            "--allocations",
            "--jobs",
            job_id,
            f"--format={fields}",
        )
        for line in out.splitlines():
            job = parse_sacct_line(line)
            if job is not None and job.job_id == job_id:
                return job
        return None

    # ---- the cluster -------------------------------------------------------------------

    async def cluster_summary(self) -> ClusterSummary:
        """Partitions with their nodes idle/allocated/down and GPUs free (from sinfo)."""
        nodes_out = await self.run(
            "sinfo",
            "--noheader",
            "--Node",
            "--Format=NodeList:|,Partition:|,StateLong:|,Gres:|,GresUsed:|",
        )
        parts_out = await self.run("sinfo", "--noheader", "--Format=Partition:|,Available:|,Time:|")
        return parse_cluster(nodes_out, parts_out, self.cluster)


# ---- parsing (pure functions: the tests feed them what the real commands print) --------


def _first_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()] or lines
    return errors[-1][:300] if errors else ""


def _epoch(value: Any) -> float | None:
    if isinstance(value, dict):  # newer Slurm: {"set": true, "number": 1700000000}
        value = value.get("number") if value.get("set", True) else None
    if isinstance(value, int | float) and value > 0:
        return float(value)
    return None


def _number(value: Any) -> int | None:
    if isinstance(value, dict):
        if value.get("infinite"):
            return None
        value = value.get("number") if value.get("set", True) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _json_exit(job: dict[str, Any]) -> tuple[int | None, int | None]:
    """The exit status and signal of a job from squeue's JSON (a wait status in 22.05,
    an object in newer versions)."""
    raw = job.get("exit_code")
    if isinstance(raw, dict):
        code = _number(raw.get("return_code"))
        sig = raw.get("signal")
        signal_id = _number(sig.get("id") if isinstance(sig, dict) else sig)
        return code, signal_id or None
    status = _number(raw)
    if status is None:
        return None, None
    return (status >> 8) & 0xFF, (status & 0x7F) or None


def json_errors(text: str) -> str | None:
    """The errors a `--json` listing reports (it exits 0 when it could not ask)."""
    with contextlib.suppress(ValueError):
        data = json.loads(text)
        errors = data.get("errors") if isinstance(data, dict) else None
        if errors:
            first = errors[0] if isinstance(errors[0], dict) else {"error": str(errors[0])}
            return str(first.get("description") or first.get("error") or "an error")[:300]
    return None


def parse_squeue_json(text: str) -> dict[str, SlurmJob]:
    """`squeue --json` → jobs by id.

    :raises ValueError: it is not squeue's JSON.
    """
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("jobs"), list):
        raise ValueError("squeue --json printed no jobs list")
    found = {}
    for raw in data["jobs"]:
        if not isinstance(raw, dict):
            continue
        state = raw.get("job_state")
        if isinstance(state, list):  # newer Slurm: ["PENDING", "REQUEUED"]
            state = state[0] if state else "UNKNOWN"
        ended = str(state) in ENDED_STATES
        code, sig = _json_exit(raw) if ended else (None, None)
        reason = str(raw.get("state_reason") or "") or None
        job = SlurmJob(
            job_id=str(raw.get("job_id")),
            name=str(raw.get("name") or ""),
            state=str(state or "UNKNOWN"),
            reason=None if reason == "None" else reason,
            exit_code=code,
            signal=sig,
            restarts=_number(raw.get("restart_cnt")) or 0,
            comment=str(raw.get("comment") or ""),
            partition=str(raw.get("partition") or ""),
            nodes=str(raw.get("nodes") or ""),
            user=str(raw.get("user_name") or ""),
            time_limit_min=_number(raw.get("time_limit")),
            gres=str(raw.get("tres_per_node") or ""),
            stdout=str(raw.get("standard_output") or ""),
            submit_time=_epoch(raw.get("submit_time")),
            start_time=_epoch(raw.get("start_time")),
            end_time=_epoch(raw.get("end_time")) if ended else None,
            source="squeue",
        )
        found[job.job_id] = job
    return found


_KEY = re.compile(r"(?:^|\s)([A-Za-z][\w/:]*)=")


def parse_keyvalues(line: str) -> dict[str, str]:
    """One `--oneliner` record: `Key=value Key2=value with spaces ...` → a dict."""
    marks = list(_KEY.finditer(line))
    out = {}
    for here, after in zip(marks, [*marks[1:], None], strict=True):
        end = after.start() if after is not None else len(line)
        out[here.group(1)] = line[here.end() : end].strip()
    return out


def _clock_time(text: str) -> float | None:
    if not text or text in ("Unknown", "None", "N/A"):
        return None
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def limit_minutes(text: str) -> int | None:
    """A Slurm duration ("1:00:00", "2-00:00:00", "30:00", "UNLIMITED") in minutes."""
    if not text or text.upper() in ("UNLIMITED", "INFINITE", "NONE", "N/A", "PARTITION_LIMIT"):
        return None
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    hours, minutes, seconds = parts[-3:]
    total = (int(days) if days else 0) * 1440 + hours * 60 + minutes + (1 if seconds else 0)
    return total


def _exit_pair(text: str) -> tuple[int | None, int | None]:
    code, _, sig = (text or "").partition(":")
    try:
        return int(code), (int(sig) or None) if sig else None
    except ValueError:
        return None, None


def parse_scontrol_jobs(text: str) -> dict[str, SlurmJob]:
    """`scontrol show job --oneliner` → jobs by id (a job a line)."""
    found = {}
    for line in text.splitlines():
        if "JobId=" not in line:
            continue
        kv = parse_keyvalues(line)
        state = kv.get("JobState", "UNKNOWN")
        code, sig = _exit_pair(kv.get("ExitCode", "")) if state in ENDED_STATES else (None, None)
        reason = kv.get("Reason") or None
        job = SlurmJob(
            job_id=kv.get("JobId", ""),
            name=kv.get("JobName", ""),
            state=state,
            reason=None if reason == "None" else reason,
            exit_code=code,
            signal=sig,
            restarts=int(kv.get("Restarts", "0") or 0),
            comment="" if kv.get("Comment") in (None, "(null)") else kv["Comment"],
            partition=kv.get("Partition", ""),
            nodes="" if kv.get("NodeList") in (None, "(null)") else kv["NodeList"],
            user=kv.get("UserId", "").split("(")[0],
            time_limit_min=limit_minutes(kv.get("TimeLimit", "")),
            gres=kv.get("TresPerNode", ""),
            stdout=kv.get("StdOut", ""),
            submit_time=_clock_time(kv.get("SubmitTime", "")),
            start_time=_clock_time(kv.get("StartTime", "")),
            end_time=_clock_time(kv.get("EndTime", "")) if state in ENDED_STATES else None,
            source="scontrol",
        )
        found[job.job_id] = job
    return found


def parse_sacct_line(line: str) -> SlurmJob | None:
    """One `sacct --parsable2` line of the fields `SlurmCli.accounted` asks for."""
    cells = line.split("|")
    if len(cells) < 13 or not cells[0].isdigit():
        return None
    state = cells[2].split()[0] if cells[2] else "UNKNOWN"  # "CANCELLED by 0"
    code, sig = _exit_pair(cells[3])
    return SlurmJob(
        job_id=cells[0],
        name=cells[1],
        state=state,
        reason=None if cells[4] in ("", "None") else cells[4],
        exit_code=code if state in ENDED_STATES else None,
        signal=sig,
        comment=cells[5],
        partition=cells[6],
        nodes="" if cells[7] in ("None assigned", "") else cells[7],
        user=cells[8],
        time_limit_min=limit_minutes(cells[9]),
        submit_time=_clock_time(cells[10]),
        start_time=_clock_time(cells[11]),
        end_time=_clock_time(cells[12]),
        source="sacct",
    )


def parse_cluster(nodes_out: str, parts_out: str, cluster: str) -> ClusterSummary:
    """The two sinfo listings of `cluster_summary` → one summary."""
    nodes: dict[str, NodeLine] = {}
    in_part: dict[str, list[str]] = {}
    for line in nodes_out.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) < 5 or not cells[0]:
            continue
        name, part = cells[0], cells[1].rstrip("*")
        in_part.setdefault(part, []).append(name)
        if name not in nodes:
            nodes[name] = NodeLine(
                name, (part,), cells[2], gres_count(cells[3], "gpu"), gres_count(cells[4], "gpu")
            )
        else:
            old = nodes[name]
            nodes[name] = NodeLine(
                name, (*old.partitions, part), old.state, old.gpus, old.gpus_used
            )
    partitions = []
    for line in parts_out.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) < 3 or not cells[0]:
            continue
        name = cells[0].rstrip("*")
        members = [nodes[n] for n in in_part.get(name, []) if n in nodes]
        counts: dict[str, int] = {}
        for node in members:
            counts[node.kind] = counts.get(node.kind, 0) + 1
        partitions.append(
            PartitionLine(
                name=name,
                default=cells[0].endswith("*"),
                up=cells[1].lower() == "up",
                max_time=cells[2],
                nodes=counts,
                gpus=sum(n.gpus for n in members),
                gpus_used=sum(min(n.gpus_used, n.gpus) for n in members),
            )
        )
    return ClusterSummary(cluster, tuple(partitions), tuple(nodes.values()))
