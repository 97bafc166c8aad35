"""Settings: read once from the environment (and an optional `.env`), then passed down.

No other module reads `os.environ` (client_config.py reads ASSISTANT_HOME alone, the same
way, for the CLI's client path); tests build a `Settings` directly. A variable that looks
meant for the assistant but is no setting (`ASSISTANT_TIMEZON`) would be ignored without a
word, so `unknown_settings` names each one, with the closest setting, for `assistant up`
to warn about.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from assistant.client_config import ENDPOINT_NAME
from assistant.errors import ConfigError

CHAT_ID_RE = re.compile(r"^(tg|sl|dc|local):[A-Za-z0-9_.@-]{1,64}$")

MissedRunPolicy = Literal["grace", "skip", "always"]


class Settings(BaseSettings):
    """Every knob the service has; one field, one comment."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    # where the SQLite file, the local-channel token and run dirs live
    assistant_home: Path = Field(default_factory=lambda: Path.home() / ".assistant")
    # where ASSISTANT_HOME lies on the Docker engine's host, when the service runs in a
    # container (bind mounts name the host's paths); none: read from the service's own
    # container's mounts. Checked at start either way (assistant/runs/engine_paths.py)
    host_home: Path | None = Field(default=None, validation_alias="ASSISTANT_HOST_HOME")
    # name the assistant answers to and shows in /status
    assistant_name: str = "assistant"
    # IANA zone used to show times and to read cron expressions
    tz: str = Field(default="UTC", validation_alias="ASSISTANT_TIMEZONE")
    # chats allowed to run commands, besides the local console (e.g. tg:12345,sl:C0123)
    admin_chats: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), validation_alias="ASSISTANT_ADMIN_CHATS"
    )
    # local channel: loopback port (0 = any free port, written to the endpoint file)
    local_port: int = Field(default=8765, ge=0, le=65535, validation_alias="ASSISTANT_LOCAL_PORT")
    # days of event/action/tool-call history to keep (0 = keep forever)
    event_log_retention_days: float = Field(default=3, ge=0)
    # days of task_runs history to keep (0 = keep forever)
    task_run_retention_days: float = Field(default=30, ge=0)
    # seconds between pruning passes (after the one at start)
    prune_interval_s: float = Field(default=3600, gt=0, validation_alias="ASSISTANT_PRUNE_INTERVAL")
    # rows deleted per pruning transaction, so a large prune never holds the lock long
    prune_batch: int = Field(default=5000, gt=0, validation_alias="ASSISTANT_PRUNE_BATCH")
    # what to do with a task run missed while the service was down
    missed_run_policy: MissedRunPolicy = Field(
        default="grace", validation_alias="ASSISTANT_MISSED_RUN_POLICY"
    )
    # how late a missed run may still start under the "grace" policy, in seconds
    missed_run_grace_s: float = Field(
        default=3600, ge=0, validation_alias="ASSISTANT_MISSED_RUN_GRACE"
    )
    # chats processed by the agent at once (the queue's global limit)
    max_concurrent: int = Field(default=3, ge=1, le=64, validation_alias="ASSISTANT_MAX_CONCURRENT")
    # how often the event writer commits, in seconds (bounds what a kill -9 can lose)
    event_flush_interval_s: float = Field(
        default=0.1, gt=0, le=5, validation_alias="ASSISTANT_EVENT_FLUSH_INTERVAL"
    )
    # the HTTP listener for /healthz and /metrics: host:port, loopback by default (port 0:
    # any free port, written to ASSISTANT_HOME/http.json); "off" disables it
    http_address: str = Field(default="127.0.0.1:9477", validation_alias="ASSISTANT_HTTP")
    # OpenTelemetry traces of the event chain over OTLP/HTTP (e.g. http://127.0.0.1:4318);
    # none: no tracing (needs the `otel` extra)
    otlp_endpoint: str | None = Field(default=None, validation_alias="ASSISTANT_OTLP_ENDPOINT")
    # the service log: "text" lines, or one JSON object a line
    log_format: Literal["text", "json"] = Field(
        default="text", validation_alias="ASSISTANT_LOG_FORMAT"
    )
    # extra strings to redact from logs (comma-separated), beside the known secrets below
    secrets: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        default=(), validation_alias="ASSISTANT_SECRETS"
    )
    # API keys and bot tokens: only ever used by their clients, and always redacted
    anthropic_api_key: SecretStr | None = None
    telegram_bot_token: SecretStr | None = None
    slack_bot_token: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    discord_bot_token: SecretStr | None = None
    # chat platforms' API servers (a self-hosted Bot API server, or a test server)
    telegram_api_url: str = "https://api.telegram.org/bot"
    slack_api_url: str = "https://slack.com/api/"
    # Slack: the slash command the app's manifest declares (`/gpu status` is /status)
    slack_command: str = Field(default="/gpu", pattern=r"^/[a-z0-9_-]{1,31}$")
    discord_api_url: str | None = None  # None: discord.py's own
    discord_gateway_url: str | None = None
    # Discord: the guild (server) whose slash commands are set at start (they show at once);
    # none: global commands (every guild the bot is in and DMs; Discord may take a while)
    discord_guild_id: int | None = Field(default=None, gt=0)
    # the model: Anthropic's Messages API (base URL for a proxy or a test server)
    anthropic_base_url: str | None = None
    model: str = Field(default="claude-sonnet-5-5", validation_alias="ASSISTANT_MODEL")
    model_max_tokens: int = Field(
        default=2048, ge=64, le=64_000, validation_alias="ASSISTANT_MODEL_MAX_TOKENS"
    )
    # tool-use loop bounds: model turns per request, and seconds per request
    agent_max_turns: int = Field(
        default=8, ge=1, le=50, validation_alias="ASSISTANT_AGENT_MAX_TURNS"
    )
    agent_timeout_s: float = Field(default=180, gt=0, validation_alias="ASSISTANT_AGENT_TIMEOUT")
    # conversation history sent to the model, in (estimated) tokens
    history_tokens: int = Field(default=12_000, ge=500, validation_alias="ASSISTANT_HISTORY_TOKENS")
    # US dollars of model use per day (UTC); 0 = no budget
    daily_budget_usd: float = Field(default=0, ge=0, validation_alias="ASSISTANT_DAILY_BUDGET_USD")
    # where runs execute: a Docker engine if one answers, else local processes
    runner: Literal["auto", "docker", "process", "slurm"] = Field(
        default="auto", validation_alias="ASSISTANT_RUNNER"
    )
    # the engine (DOCKER_HOST semantics: unix://, tcp://host:2376, ssh://user@host)
    docker_host: str | None = Field(default=None, validation_alias="DOCKER_HOST")
    # Slurm (ASSISTANT_RUNNER=slurm; SLURM_CONF picks the cluster): run dirs on a filesystem
    # the service and the nodes share at the same path (default ASSISTANT_HOME/runs)
    slurm_run_root: Path | None = Field(default=None, validation_alias="ASSISTANT_SLURM_RUN_ROOT")
    # the Python a job runs the agent with on the nodes (a venv or conda env with torch);
    # default: the service's own interpreter (its path must exist on the nodes)
    slurm_python: str | None = Field(default=None, validation_alias="ASSISTANT_SLURM_PYTHON")
    # an Apptainer/Singularity image (.sif) jobs run the agent in instead (its python3)
    slurm_apptainer: str | None = Field(default=None, validation_alias="ASSISTANT_SLURM_APPTAINER")
    # the partition jobs go to (default: the cluster's default partition)
    slurm_partition: str | None = Field(default=None, validation_alias="ASSISTANT_SLURM_PARTITION")
    # --time of a run whose recipe declares no time_limit ("4:00:00", "2-00:00:00"); none:
    # the partition's default
    slurm_time: str | None = Field(
        default=None,
        pattern=r"^(\d+-)?\d+(:\d{1,2}){0,2}$",
        validation_alias="ASSISTANT_SLURM_TIME",
    )
    # the admin's own sbatch options, shell-style words (e.g. "--account=ml --qos=normal")
    slurm_args: str = Field(default="", validation_alias="ASSISTANT_SLURM_ARGS")
    # image a run's container starts from
    run_image: str = Field(default="assistant-run:latest", validation_alias="ASSISTANT_RUN_IMAGE")
    # uid (and gid) a run's container runs as when the service runs as root; by default no
    # login account (above login.defs' UID_MAX); a warning at start if it is a login user's
    run_uid: int = Field(default=64000, ge=1, le=2**31 - 2, validation_alias="ASSISTANT_RUN_UID")
    # the admin's own recipes (declared jobs); default: ASSISTANT_HOME/recipes.toml
    recipes_file: Path | None = Field(default=None, validation_alias="ASSISTANT_RECIPES_FILE")
    # folders a declared recipe's working directory may lie in (comma-separated); none set:
    # no recipe may mount a working directory
    recipe_roots: Annotated[tuple[Path, ...], NoDecode] = Field(
        default=(), validation_alias="ASSISTANT_RECIPE_ROOTS"
    )
    # serving benchmarks: the server image started when /run bench serve gives no url=
    bench_image: str = Field(
        default="vllm/vllm-openai:latest", validation_alias="ASSISTANT_BENCH_IMAGE"
    )
    # options every serving container gets after the ones chat may set (shell-style words)
    bench_server_args: str = Field(default="", validation_alias="ASSISTANT_BENCH_SERVER_ARGS")
    # shared memory for serving containers (tensor-parallel workers talk through it)
    bench_shm_size: str = Field(default="16g", validation_alias="ASSISTANT_BENCH_SHM_SIZE")
    # a host folder of model weights (Hugging Face cache) serving containers mount
    hf_cache: Path | None = Field(default=None, validation_alias="ASSISTANT_HF_CACHE")
    # label written into every benchmark result (default: the host name)
    cluster_label: str = Field(
        default_factory=socket.gethostname, validation_alias="ASSISTANT_CLUSTER_LABEL"
    )
    # a benchmark worse than the last comparable one by more than this (%) is a regression
    bench_regression_pct: float = Field(
        default=5.0, gt=0, le=100, validation_alias="ASSISTANT_BENCH_REGRESSION_PCT"
    )
    # let /run bench serve url= reach link-local and cloud metadata addresses (169.254.x.x,
    # fe80::, metadata.google.internal, ...): off, since benchmarks use the host network
    bench_allow_link_local: bool = Field(
        default=False, validation_alias="ASSISTANT_BENCH_ALLOW_LINK_LOCAL"
    )
    # GPU indices runs may use: "auto" (all NVML sees), "none", or a list like "0,1,2,3"
    gpus: str = Field(default="auto", validation_alias="ASSISTANT_GPUS")
    # runs that need no GPU and may run at once
    max_cpu_runs: int = Field(default=2, ge=1, le=64, validation_alias="ASSISTANT_MAX_CPU_RUNS")
    # default container limits (a run's mem_mb= / cpus= override them)
    run_memory_mb: int = Field(default=8192, ge=64, validation_alias="ASSISTANT_RUN_MEMORY_MB")
    run_cpus: float = Field(default=2.0, gt=0, validation_alias="ASSISTANT_RUN_CPUS")
    run_pids_limit: int = Field(default=1024, ge=16, validation_alias="ASSISTANT_RUN_PIDS_LIMIT")
    # a run with no heartbeat or progress for this long is reported as stalled
    stall_timeout_s: float = Field(default=300, gt=0, validation_alias="ASSISTANT_STALL_TIMEOUT")
    # how often the monitor reads runs' events, in seconds
    monitor_interval_s: float = Field(
        default=0.5, gt=0, le=30, validation_alias="ASSISTANT_MONITOR_INTERVAL"
    )
    # seconds between edits of a run's live progress message (0 = no progress message)
    progress_interval_s: float = Field(
        default=30, ge=0, validation_alias="ASSISTANT_PROGRESS_INTERVAL"
    )
    # seconds a paused or stopped run gets to checkpoint before it is killed
    stop_grace_s: float = Field(default=60, ge=1, validation_alias="ASSISTANT_STOP_GRACE")
    # seconds between passes over watched jobs (/watch), and whether /watch stop may stop one
    watch_interval_s: float = Field(
        default=5, gt=0, le=300, validation_alias="ASSISTANT_WATCH_INTERVAL"
    )
    watch_allow_stop: bool = Field(default=False, validation_alias="ASSISTANT_WATCH_ALLOW_STOP")
    # seconds a stopped watched container or process gets after SIGTERM before SIGKILL
    watch_stop_grace_s: float = Field(
        default=10, gt=0, le=300, validation_alias="ASSISTANT_WATCH_STOP_GRACE"
    )
    # a pool of GPU hosts (runs/pool.py); default ASSISTANT_HOME/hosts.toml, used if present
    hosts_file: Path | None = Field(default=None, validation_alias="ASSISTANT_HOSTS_FILE")
    # seconds a pool host may stay silent before its runs are given up as lost
    host_lost_after_s: float = Field(
        default=600, gt=0, validation_alias="ASSISTANT_HOST_LOST_AFTER"
    )
    # seconds between health probes of each pool host
    host_probe_s: float = Field(default=5, gt=0, le=300, validation_alias="ASSISTANT_HOST_PROBE")
    # log level of the service's own diagnostics
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", validation_alias="ASSISTANT_LOG_LEVEL"
    )

    @field_validator("tz")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name like Europe/Berlin"
            ) from exc
        return value

    @field_validator("admin_chats", mode="before")
    @classmethod
    def _split_chats(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            for chat in value:
                if not CHAT_ID_RE.match(str(chat)):
                    raise ValueError(
                        f"{chat!r} is not a chat id;"
                        " use a namespaced id like tg:12345, sl:C0123, dc:987"
                    )
            return tuple(value)
        return value

    @field_validator("secrets", mode="before")
    @classmethod
    def _split_secrets(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part for part in value.split(",") if part)
        return value

    @field_validator("recipe_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            for root in value:
                if not Path(root).is_absolute():
                    raise ValueError(f"{root!r} is not an absolute path")
            return tuple(Path(root) for root in value)
        return value

    @field_validator("bench_server_args")
    @classmethod
    def _shell_words(cls, value: str) -> str:
        try:
            shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split into words: {exc}") from None
        return value

    @field_validator("gpus")
    @classmethod
    def _gpu_list(cls, value: str) -> str:
        text = value.strip().lower()
        if text in ("auto", "none", ""):
            return text or "none"
        parts = [p.strip() for p in text.split(",")]
        if not all(p.isdigit() for p in parts) or len(set(parts)) != len(parts):
            raise ValueError(f"{value!r}: use auto, none, or distinct GPU indices like 0,1,2,3")
        return ",".join(parts)

    @property
    def runs_dir(self) -> Path:
        if self.runner == "slurm" and self.slurm_run_root is not None:
            return self.slurm_run_root  # shared with the cluster's nodes
        return self.assistant_home / "runs"

    @property
    def recipes_path(self) -> Path:
        return self.recipes_file or self.assistant_home / "recipes.toml"

    @property
    def hosts_path(self) -> Path:
        return self.hosts_file or self.assistant_home / "hosts.toml"

    @property
    def secrets_dir(self) -> Path:
        """Secret files a declared recipe may name (one value a file, mode 0600)."""
        return self.assistant_home / "secrets"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    @property
    def db_path(self) -> Path:
        return self.assistant_home / "assistant.db"

    @property
    def endpoint_path(self) -> Path:
        """Port and token of the running local channel (mode 0600)."""
        return self.assistant_home / ENDPOINT_NAME

    def secret_values(self) -> list[str]:
        """Every configured secret, for the redactor."""
        found = [
            self.anthropic_api_key,
            self.telegram_bot_token,
            self.slack_bot_token,
            self.slack_app_token,
            self.discord_bot_token,
            *self.secrets,
        ]
        return [s.get_secret_value() for s in found if s is not None and s.get_secret_value()]


def load_settings(**overrides: object) -> Settings:
    """Read and validate settings once.

    :raises ConfigError: naming each bad variable and what it should be.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = str(err["loc"][0]).upper() if err["loc"] else "?"
            problems.append(f"{name}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


# ASSISTANT_* variables that are read by the project's other tools, not by the service.
NOT_SETTINGS = frozenset(
    {
        "ASSISTANT_BASE_IMAGE",  # deploy/build-images.sh
        "ASSISTANT_DOCKERD_DIR",  # scripts/docker-engine
        "ASSISTANT_DOCKERD_WAIT",  # scripts/docker-engine
        "ASSISTANT_REPORT_PREFIX",  # set for a run by its agent (assistant/jobs)
        "ASSISTANT_TEST_NO_DOCKER",  # the tests
    }
)


def setting_names() -> frozenset[str]:
    """The variable name of every setting, as the environment or `.env` spells it."""
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names.add((alias if isinstance(alias, str) else name).upper())
    return frozenset(names)


def unknown_settings(
    environ: Mapping[str, str] | None = None, env_file: Path | None = Path(".env")
) -> list[str]:
    """A line for each variable meant for the assistant that is no setting, with the
    closest setting: any `ASSISTANT_*` in the environment or in `.env`, and any other name
    in `.env` close to a setting's (`TELEGRAM_BOT_TOKN`). Settings ignore them silently.
    """
    known = setting_names()
    ours = known | NOT_SETTINGS
    found: dict[str, str] = {}
    for name in os.environ if environ is None else environ:
        if name.upper().startswith("ASSISTANT_") and name.upper() not in ours:
            found[name] = "the environment"
    if env_file is not None and env_file.is_file():
        from dotenv import dotenv_values

        for name in dotenv_values(env_file, encoding="utf-8"):
            upper = name.upper()
            if upper in ours:
                continue
            if upper.startswith("ASSISTANT_") or _closest(upper, known, cutoff=0.85):
                found.setdefault(name, str(env_file))
    lines = []
    for name, where in sorted(found.items()):
        close = _closest(name.upper(), known, cutoff=0.8)
        hint = (
            f"did you mean {close}?" if close else "deploy/assistant.env.example lists the settings"
        )
        lines.append(f"{name} (in {where}) is not a setting and is ignored; {hint}")
    return lines


def _closest(name: str, known: frozenset[str], *, cutoff: float) -> str | None:
    matches = difflib.get_close_matches(name, sorted(known), n=1, cutoff=cutoff)
    return matches[0] if matches else None
