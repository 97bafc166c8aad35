#!/usr/bin/env python3
"""Start deploy/compose.yaml's service with plain `docker run`, where `docker compose` is
missing (Debian's docker.io has no compose plugin).

It reads compose.yaml itself, so the two cannot drift: every key the file uses becomes the
`docker run` option compose would give, and a key this script does not know is an error,
never skipped. Only the standard library: it runs on the host's python3 before anything
is installed.

    python3 deploy/compose_run.py up        # volumes, then `docker run -d` (image built first)
    python3 deploy/compose_run.py argv      # the `docker run` command line it would run
    python3 deploy/compose_run.py down [-v] # remove the container (-v: and its volumes)

The container is named as compose names it, <project>-<service>-1 (project: -p, else
COMPOSE_PROJECT_NAME, else the file's folder, `deploy`): `docker exec deploy-assistant-1
assistant send "/status"`. Variables are interpolated as compose does (${X}, ${X:-default},
${X:?message}, $$), from the environment and the file's folder's .env.

The YAML read is the subset compose.yaml is written in (block mappings and lists, plain
and quoted scalars, flow lists of scalars, comments); anything else is an error that
names the line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_FILE = Path(__file__).resolve().parent / "compose.yaml"


class ComposeError(Exception):
    """The file, or a variable it needs, is not what this script can run."""


# ---- the YAML subset -------------------------------------------------------------------


@dataclass
class _Line:
    number: int
    indent: int
    text: str


def _strip_comment(text: str) -> str:
    quote = ""
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip()
    return text.rstrip()


def read_yaml(text: str) -> Any:
    lines: list[_Line] = []
    for number, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise ComposeError(f"line {number}: tabs in indentation")
        body = _strip_comment(raw)
        if body.strip():
            lines.append(_Line(number, len(body) - len(body.lstrip()), body.strip()))
    if not lines:
        return None
    value, end = _block(lines, 0, lines[0].indent)
    if end != len(lines):
        raise ComposeError(f"line {lines[end].number}: unexpected indentation")
    return value


_KEY = re.compile(r"^([A-Za-z0-9_.-]+):(?:\s+(.*))?$")


def _block(lines: list[_Line], i: int, indent: int) -> tuple[Any, int]:
    if lines[i].text.startswith("- ") or lines[i].text == "-":
        items: list[Any] = []
        while i < len(lines) and lines[i].indent == indent and lines[i].text.startswith("-"):
            item = lines[i].text[1:].strip()
            if not item or (_KEY.match(item) and not item.startswith(("'", '"'))):
                raise ComposeError(f"line {lines[i].number}: only scalars in a list")
            items.append(_scalar(item, lines[i].number))
            i += 1
        return items, i
    mapping: dict[str, Any] = {}
    while i < len(lines) and lines[i].indent == indent:
        match = _KEY.match(lines[i].text)
        if not match:
            raise ComposeError(f"line {lines[i].number}: expected `key: value`")
        key, rest = match.group(1), match.group(2)
        if key in mapping:
            raise ComposeError(f"line {lines[i].number}: {key} given twice")
        i += 1
        if rest:
            mapping[key] = _scalar(rest, lines[i - 1].number)
        elif i < len(lines) and lines[i].indent > indent:
            mapping[key], i = _block(lines, i, lines[i].indent)
        else:
            mapping[key] = None
    return mapping, i


def _scalar(text: str, number: int) -> Any:
    if text.startswith('"'):
        try:
            return str(json.loads(text))
        except json.JSONDecodeError:
            raise ComposeError(f"line {number}: a double-quoted string it cannot read") from None
    if text.startswith("'"):
        if not text.endswith("'") or len(text) < 2:
            raise ComposeError(f"line {number}: an unterminated single-quoted string")
        return text[1:-1].replace("''", "'")
    if text.startswith("["):
        if not text.endswith("]"):
            raise ComposeError(f"line {number}: a flow list must end on its line")
        return [_scalar(part, number) for part in _flow_items(text[1:-1], number)]
    if text.startswith(("{", "&", "*", "!", "|", ">")):
        raise ComposeError(f"line {number}: {text[0]!r} is beyond the YAML this script reads")
    return text


def _flow_items(inner: str, number: int) -> list[str]:
    """`a, "b, c", 'd'` -> the three items' texts, still quoted; commas in quotes kept."""
    items, current, quote = [], "", ""
    for ch in inner:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == ",":
            items.append(current.strip())
            current = ""
            continue
        elif ch in "[]{}":
            raise ComposeError(f"line {number}: nested flow collections are not read")
        current += ch
    if quote:
        raise ComposeError(f"line {number}: an unterminated string in a flow list")
    items.append(current.strip())
    return [item for item in items if item] if inner.strip() else []


# ---- compose's interpolation ----------------------------------------------------------

_VAR = re.compile(
    r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}"
    r"|\$([A-Za-z_][A-Za-z0-9_]*)"
)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, arg = match.group(2), match.group(3) or ""
        have = env.get(name)
        unset = have is None or (op is not None and op.startswith(":") and have == "")
        if op in ("-", ":-"):
            return arg if unset else str(have)
        if op in ("?", ":?"):
            if unset:
                raise ComposeError(f"required variable {name} is missing a value: {arg}")
            return str(have)
        return have or ""

    return _VAR.sub(one, value)


def dotenv(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


# ---- compose.yaml -> docker run --------------------------------------------------------


def _seconds(text: str) -> int:
    total, found = 0.0, False
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", text):
        found = True
        total += float(amount) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
    if not found:
        raise ComposeError(f"{text!r} is not a duration (e.g. 30s, 1m30s)")
    return int(total)


@dataclass(frozen=True)
class Plan:
    """What `up` does: the named volumes it creates and the `docker run` it runs."""

    container: str
    image: str
    volumes: tuple[str, ...]
    argv: tuple[str, ...]


def plan(file: Path, project: str, env: dict[str, str], service: str = "assistant") -> Plan:
    top = read_yaml(file.read_text())
    if not isinstance(top, dict):
        raise ComposeError(f"{file}: not a mapping")
    top = interpolate(top, env)
    unknown = set(top) - {"services", "volumes"}
    if unknown:
        raise ComposeError(f"{file}: top-level {', '.join(sorted(unknown))} not supported")
    declared = top.get("volumes") or {}
    svc = (top.get("services") or {}).get(service)
    if not isinstance(svc, dict):
        raise ComposeError(f"{file}: no service {service!r}")
    name = f"{project}-{service}-1"
    argv = ["docker", "run", "--detach", "--name", name]
    argv += ["--label", f"com.docker.compose.project={project}"]
    argv += ["--label", f"com.docker.compose.service={service}"]
    volumes: list[str] = []
    base = file.parent

    def as_list(key: str) -> list[Any]:
        value = svc[key]
        return value if isinstance(value, list) else [value]

    for key in svc:
        if key == "image":
            continue
        elif key == "build":
            continue  # `up` runs the image that is there; build it first
        elif key == "restart":
            argv += ["--restart", svc[key]]
        elif key == "env_file":
            for item in as_list(key):
                path = Path(os.path.normpath(base / item))
                if not path.is_file():
                    raise ComposeError(f"env file {path} not found (env_file in {file})")
                argv += ["--env-file", str(path)]
        elif key == "environment":
            items = svc[key]
            pairs = (
                items.items()
                if isinstance(items, dict)
                else [item.partition("=")[::2] for item in items]
            )
            for k, v in pairs:
                argv += ["--env", f"{k}={'' if v is None else v}"]
        elif key == "group_add":
            for item in as_list(key):
                argv += ["--group-add", str(item)]
        elif key == "volumes":
            for item in as_list(key):
                source, _, rest = str(item).partition(":")
                if source.startswith(("/", ".", "~")):
                    source = os.path.normpath(base / Path(source).expanduser())
                else:
                    if source not in declared:
                        raise ComposeError(f"volume {source} is not declared under volumes:")
                    source = f"{project}_{source}"
                    volumes.append(source)
                argv += ["--volume", f"{source}:{rest}"]
        elif key == "ports":
            for item in as_list(key):
                argv += ["--publish", str(item)]
        elif key == "healthcheck":
            check = svc[key]
            for hk, hv in check.items():
                if hk == "test":
                    form, *words = hv if isinstance(hv, list) else ["CMD-SHELL", hv]
                    cmd = shlex.join(words) if form == "CMD" else " ".join(words)
                    argv += ["--health-cmd", cmd]
                elif hk in ("interval", "timeout", "start_period"):
                    argv += [f"--health-{hk.replace('_', '-')}", f"{_seconds(hv)}s"]
                elif hk == "retries":
                    argv += ["--health-retries", str(hv)]
                else:
                    raise ComposeError(f"healthcheck.{hk} is not known to {__file__}")
        elif key == "security_opt":
            for item in as_list(key):
                argv += ["--security-opt", str(item)]
        elif key == "stop_signal":
            argv += ["--stop-signal", svc[key]]
        elif key == "stop_grace_period":
            argv += ["--stop-timeout", str(_seconds(svc[key]))]
        else:
            raise ComposeError(
                f"{file}: services.{service}.{key} is not known to {__file__}: teach it the"
                " key's `docker run` option, or use `docker compose`"
            )
    image = str(svc.get("image") or "")
    if not image:
        raise ComposeError(f"{file}: services.{service} names no image")
    argv.append(image)
    return Plan(name, image, tuple(volumes), tuple(argv))


def _docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["docker", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise ComposeError(f"docker {' '.join(args[:2])}: {done.stderr.strip()}")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compose_run.py", description=__doc__.split("\n")[0])
    parser.add_argument("-f", "--file", type=Path, default=DEFAULT_FILE)
    parser.add_argument("-p", "--project-name", default=None)
    parser.add_argument("command", choices=["up", "down", "argv"])
    parser.add_argument("-v", "--volumes", action="store_true", help="down: remove volumes")
    args = parser.parse_args(argv)
    file = args.file.resolve()
    env = {**dotenv(file.parent / ".env"), **os.environ}
    project = args.project_name or env.get("COMPOSE_PROJECT_NAME") or file.parent.name
    try:
        p = plan(file, project, env)
        if args.command == "argv":
            print(shlex.join(p.argv))
        elif args.command == "down":
            _docker("rm", "--force", p.container, check=False)
            for volume in p.volumes if args.volumes else ():
                _docker("volume", "rm", "--force", volume, check=False)
        else:
            if _docker("image", "inspect", p.image, check=False).returncode != 0:
                raise ComposeError(
                    f"image {p.image} is missing: build it with deploy/build-service-image.sh"
                )
            for volume in p.volumes:
                _docker(
                    "volume", "create", "--label", f"com.docker.compose.project={project}", volume
                )
            print(_docker(*p.argv[1:]).stdout.strip())
    except ComposeError as exc:
        print(f"compose_run: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
