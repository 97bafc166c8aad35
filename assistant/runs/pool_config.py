"""hosts.toml: the engines of a pool of GPU hosts, as an admin writes them.

```toml
[hosts.local]                      # the name /status, host= and the runs show
engine = "unix:///var/run/docker.sock"
gpus = "auto"                      # NVML through the engine; "none"; or indices [0, 1]
labels = ["a100"]                  # host= may name a label: any host that has it

[hosts.gpu2]
engine = "ssh://ml@gpu2"           # DOCKER_HOST forms: unix://, tcp://host:2376, ssh://
gpus = [0, 1, 2, 3]
```

Hosts are tried in the file's order. The file is read once at start and checked whole
(pydantic, strict, no unknown keys); a mistake stops the service with one line per
problem naming the key and what would be right.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from assistant.errors import ConfigError
from assistant.runs.docker_engine import parse_docker_host

NAME_PATTERN = r"^[a-z][a-z0-9-]{0,31}$"
_NAME = re.compile(NAME_PATTERN)
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class HostEntry(BaseModel):
    """One engine of the pool."""

    model_config = ConfigDict(extra="forbid", strict=True)

    engine: str
    # "auto": ask the engine (a probe container running nvidia-smi where it has the
    # NVIDIA runtime, else none); "none"; or the indices runs may take, e.g. [0, 1]
    gpus: Literal["auto", "none"] | list[Annotated[int, Field(ge=0, le=255)]] = "auto"
    labels: list[Name] = Field(default_factory=list)

    @field_validator("engine")
    @classmethod
    def _engine(cls, value: str) -> str:
        try:
            return parse_docker_host(value).url
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("gpus")
    @classmethod
    def _distinct(cls, value: object) -> object:
        if isinstance(value, list) and len(set(value)) != len(value):
            raise ValueError(f"{value}: each GPU index once, e.g. [0, 1]")
        return value


class HostsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    hosts: dict[str, HostEntry] = Field(min_length=1)

    @field_validator("hosts")
    @classmethod
    def _names(cls, value: dict[str, HostEntry]) -> dict[str, HostEntry]:
        for name in value:
            if not _NAME.match(name):
                raise ValueError(
                    f"{name!r} is not a host name: a lower-case letter, then letters, digits"
                    " or -, at most 32 (e.g. gpu2)"
                )
        return value

    @model_validator(mode="after")
    def _no_clash(self) -> HostsFile:
        seen: dict[str, str] = {}
        for name, entry in self.hosts.items():
            if entry.engine in seen:
                raise ValueError(
                    f"hosts {seen[entry.engine]} and {name} name the same engine"
                    f" ({entry.engine}); give each engine once"
                )
            seen[entry.engine] = name
            for label in entry.labels:
                if label in self.hosts:
                    raise ValueError(
                        f"hosts.{name}: label {label!r} is also a host's name;"
                        " host= would be ambiguous, rename one"
                    )
        return self


def load_hosts(path: Path) -> HostsFile | None:
    """The pool in `path`; None when there is no such file (one engine, DOCKER_HOST).

    :raises ConfigError: unreadable, not TOML, or not a pool: every problem, one a line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return HostsFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: " + "; ".join(_problems(exc))) from None


def _problems(exc: ValidationError) -> list[str]:
    found = []
    for error in exc.errors(include_url=False):
        # a union's branch names ("literal['auto','none']", "list[int]") are not keys
        where = ".".join(
            str(part) for part in error["loc"] if not str(part).startswith(("list[", "literal["))
        )
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key (a host takes engine, gpus, labels)"
        elif error["type"] == "missing":
            message = 'missing (e.g. engine = "ssh://user@gpu2")'
        elif error["type"] != "value_error" and (where.endswith("gpus") or ".gpus." in where):
            message = 'use "auto", "none" or a list of GPU indices like [0, 1]'
        found.append(f"{where}: {message}" if where else message)
    return list(dict.fromkeys(found))  # a union's alternatives say the same thing twice
