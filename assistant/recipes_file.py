r"""Admin-declared recipes: read and check ASSISTANT_HOME/recipes.toml.

An admin declares training jobs the assistant may launch; chat can then only pick one by
name and set its declared, typed, bounded parameters. Everything that could go wrong is
found here, when the file is loaded, and reported with its line, every problem at once;
a recipe with any problem is left out, the others load. A missing file means no
declared recipes.

A full example:

```toml
[recipes.nanogpt]
summary = "nanoGPT on Shakespeare characters"
image = "nanogpt:latest"          # optional; default: the assistant's run image
workdir = "/srv/ml/nanoGPT"       # read-only at /workspace/code (docker); the cwd (process)
workdir_writable = false
command = ["torchrun", "--standalone", "--nproc_per_node={nproc}", "train.py",
           "config/train_shakespeare_char.py", "--max_iters={steps}", "--learning_rate={lr}",
           "--dataset={dataset}", "--out_dir={run_dir}/out", "--compile={compile}"]
gpus = 1
memory_mb = 32000
cpus = 8
time_limit = "12h"
network = false
key_metric = "val_loss"
key_metric_mode = "min"
env = { WANDB_MODE = "disabled" }
secrets = { HF_TOKEN = "hf_token" }

[recipes.nanogpt.params]
steps = { type = "int", default = 5000, min = 1, max = 600000, help = "training iterations" }
lr = { type = "float", default = 1e-3, min = 1e-6, max = 1.0 }
compile = { type = "bool", default = false }

[recipes.nanogpt.params.dataset]
type = "str"
default = "shakespeare_char"
choices = ["shakespeare_char", "openwebtext"]

[recipes.nanogpt.progress]
json_prefix = "@assistant "
progress = ['iter (?P<step>\d+): loss (?P<loss>[\d.]+), time (?P<time_ms>[\d.]+)ms']
metrics = ['step (?P<step>\d+): train loss (?P<train_loss>[\d.]+), val loss (?P<val_loss>[\d.]+)']
total = "steps"

[recipes.nanogpt.resume]
checkpoints = "out/ckpt*.pt"
location = "run_dir"
args = ["--init_from=resume", "--resume_from={checkpoint}"]
```

The keys of a recipe:

- `command` (required): the argv as a list of templates, never a shell string. `{name}`
  is replaced inside one argument by a parameter's value, or by a built-in: `{gpus}`,
  `{nproc}`, `{run_dir}`, `{workdir}` (only when a workdir is declared); `{{` and `}}`
  are literal braces. Bools are written `true` / `false`.
- `summary` (""), `image` (the run image), `gpus` (1; 0 to 64), `memory_mb` (at least
  64), `cpus` (above 0), `time_limit` (seconds, or "90m", "12h", "2d", "1h30m"),
  `network` (false), `key_metric` ("loss") and `key_metric_mode` ("min" or "max").
- `workdir`: an absolute directory inside one of the allowed roots (symlinks resolved),
  not under or holding credentials (`.ssh`, `.aws`, `.gnupg`, `.kube`, `.docker`,
  `.config/gcloud`, `.env`, `.netrc`, private keys like `id_rsa` or `*.pem` / `*.key`)
  anywhere in its tree; the check walks at most 12 levels and 50,000 entries, and a
  larger tree is refused.
  `workdir_writable` (false) lets the command write there.
- `env`: literal environment values. `secrets`: ENV_VAR = name of a file in
  ASSISTANT_HOME/secrets, read at launch and never logged.
- `[params.<name>]`: `type` (int, float, str or bool), `default`, `min` / `max` (numbers),
  `choices` (required for str: chat may only pick one of these plain tokens), `help`.
  Lowercase names; not `gpus`, `procs`, `mem_mb`, `cpus` (every run has those) nor a
  built-in placeholder.
- `[progress]`: `json_prefix` (lines "<prefix>{json}" are protocol events), `progress`
  (regexes with a `step` group; other groups become progress fields), `metrics` (regexes;
  each named group but `step` becomes a metric), `total` (an int parameter's name, or a
  number of steps).
- `[resume]`: `checkpoints` (a glob relative to `location`), `location` (`run_dir`, or
  `workdir` with `workdir_writable = true`), `args` (templates appended on resume; only
  these may name `{checkpoint}`).
"""

from __future__ import annotations

import bisect
import contextlib
import difflib
import fnmatch
import math
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from assistant.durations import parse_duration
from assistant.errors import CommandError
from assistant.jobs.declared import (
    BUILTIN_FIELDS,
    RESUME_ONLY_FIELDS,
    DeclaredRecipe,
    ProgressRules,
    ResumeRule,
    template_fields,
)
from assistant.jobs.recipes import JOBS, Param, ParamError, ParamType
from assistant.runs.runner import IMAGE_REF
from assistant.runs.spec import RUN_PARAMS

RESERVED_NAMES = tuple(JOBS)  # the built-in recipes and the benchmark job
RUN_PARAM_NAMES = tuple(RUN_PARAMS)  # every run has these
# Path components that hold credentials: a workdir under one is never mounted.
BLOCKED_NAMES = (".ssh", ".aws", ".gnupg", ".kube", ".docker", ".env", ".netrc")
BLOCKED_SEQUENCES = ((".config", "gcloud"),)
KEY_FILE_PATTERNS = ("id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", "*.pem", "*.key")
# How far the credential check walks a workdir: past either, the folder is refused.
MAX_WALK_DEPTH = 12
MAX_WALK_ENTRIES = 50_000
MAX_GPUS = 64
MIN_MEMORY_MB = 64
MAX_TIME_LIMIT = timedelta(days=3650)

RECIPE_KEYS = (
    "summary",
    "image",
    "workdir",
    "workdir_writable",
    "command",
    "params",
    "gpus",
    "memory_mb",
    "cpus",
    "time_limit",
    "env",
    "secrets",
    "network",
    "progress",
    "resume",
    "key_metric",
    "key_metric_mode",
)
PARAM_KEYS = ("type", "default", "min", "max", "choices", "help")
PROGRESS_KEYS = ("json_prefix", "progress", "metrics", "total")
RESUME_KEYS = ("checkpoints", "location", "args")

RECIPE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")  # also what the model may name
_PARAM_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
_SECRET_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_GROUP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_METRIC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_TOKEN = re.compile(r"[A-Za-z0-9_.:/+=@,][A-Za-z0-9_.:/+=@,-]*")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SYNTAX_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_SYNTAX_END = re.compile(r"\s*\(at end of document\)\s*$")
_PARAM_TYPES: dict[str, ParamType] = {"int": int, "float": float, "str": str, "bool": bool}
# Progress events carry these themselves; a regex group may not overwrite them.
_PROGRESS_RESERVED = ("ts", "type", "total")

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One mistake in the file, at a line when it could be found."""

    line: int | None
    message: str
    file: str = "recipes.toml"

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class LoadResult:
    """The recipes that passed every check, and every problem, in file order."""

    recipes: dict[str, DeclaredRecipe] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    mtime_ns: int | None = None  # None: no file; reload when it changes

    @property
    def ok(self) -> bool:
        return not self.problems


def load_recipes(
    path: Path,
    *,
    allowed_roots: Sequence[Path],
    secrets_dir: Path,
    protected: Sequence[Path] = (),
) -> LoadResult:
    """Read and check a recipes file.

    `allowed_roots`: directories a workdir must lie in. `secrets_dir` holds the secret
    files; it and every `protected` path (ASSISTANT_HOME) may neither hold nor lie inside
    a workdir.
    """
    name = path.name
    try:
        info = path.stat()
    except FileNotFoundError:
        return LoadResult()
    except OSError as exc:
        return LoadResult(problems=[Problem(None, f"cannot read {path}: {exc.strerror}", name)])
    if stat.S_ISREG(info.st_mode) and info.st_mode & stat.S_IWOTH:
        message = (
            f"{path} is writable by every user (mode {stat.S_IMODE(info.st_mode):04o}), so "
            "anyone could declare a command for the assistant to run; no recipe loads "
            f"until it is not (chmod o-w {path})"
        )
        return LoadResult(problems=[Problem(None, message, name)], mtime_ns=info.st_mtime_ns)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        problem = Problem(None, f"cannot read {path}: {exc.strerror}", name)
        return LoadResult(problems=[problem], mtime_ns=info.st_mtime_ns)
    return check_text(
        raw,
        file=name,
        allowed_roots=allowed_roots,
        secrets_dir=secrets_dir,
        protected=protected,
        mtime_ns=info.st_mtime_ns,
    )


def check_text(
    raw: bytes | str,
    *,
    file: str = "recipes.toml",
    allowed_roots: Sequence[Path],
    secrets_dir: Path,
    protected: Sequence[Path] = (),
    mtime_ns: int | None = None,
) -> LoadResult:
    """`load_recipes` on text already read: parse, locate keys, check every recipe."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            problem = Problem(line, "not UTF-8 text: fix the encoding of this line", file)
            return LoadResult(problems=[problem], mtime_ns=mtime_ns)
    else:
        text = raw
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return LoadResult(problems=[_syntax_problem(str(exc), text, file)], mtime_ns=mtime_ns)
    checker = _Checker(
        lines=_KeyLines.scan(text),
        file=file,
        allowed_roots=[_resolve(r) for r in allowed_roots],
        secrets_dir=secrets_dir,
        protected=[_resolve(p) for p in (secrets_dir, *protected)],
    )
    recipes = checker.check(data)
    problems = sorted(checker.problems, key=lambda p: p.line or 0)
    return LoadResult(recipes=recipes, problems=problems, mtime_ns=mtime_ns)


def parse_time_limit(value: object) -> float:
    """Seconds from a number of seconds or a duration like "90m", "12h", "2d", "1h30m".

    :raises ValueError: not positive, too long, or not a duration.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f'must be seconds or a duration like "12h", got {_kind(value)}')
    if isinstance(value, str):
        try:
            return parse_duration(value, minimum=timedelta(seconds=1)).total_seconds()
        except CommandError as exc:
            raise ValueError(str(exc)) from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a positive number of seconds, got {value!r}")
    if value > MAX_TIME_LIMIT.total_seconds():
        raise ValueError(f"{value:g} s is too long; the longest is 3650d")
    return float(value)


def blocked_component(path: Path) -> str | None:
    """The part of `path` that may hold credentials (`.ssh`, `id_rsa`, ...), or None."""
    parts = path.parts
    for i, part in enumerate(parts):
        if part in BLOCKED_NAMES or any(fnmatch.fnmatchcase(part, p) for p in KEY_FILE_PATTERNS):
            return part
        for seq in BLOCKED_SEQUENCES:
            if tuple(parts[i : i + len(seq)]) == seq:
                return "/".join(seq)
    return None


def _syntax_problem(message: str, text: str, file: str) -> Problem:
    """tomllib says "(at line L, column C)" at the end of its message: make that the line."""
    at = _SYNTAX_AT.search(message)
    if at is not None:
        detail = message[: at.start()]
        return Problem(
            int(at.group(1)), f"TOML syntax error: {detail} at column {at.group(2)}", file
        )
    end = _SYNTAX_END.search(message)
    if end is not None:
        last = max(1, text.count("\n") + (0 if text.endswith("\n") else 1))
        return Problem(
            last, f"TOML syntax error: {message[: end.start()]} at the end of the file", file
        )
    return Problem(None, f"TOML syntax error: {message}", file)


def _resolve(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


def _shown(value: object) -> str:
    """A value in a message: its kind, and the value itself when short."""
    if isinstance(value, dict | list):
        return _kind(value)
    text = repr(value)
    return f"{_kind(value)} {text}" if len(text) <= 40 else _kind(value)


def _suggest(word: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _ScanError(Exception):
    """The key scanner met something it does not follow; keep what it found so far."""


class _KeyLines:
    """Where each key of a TOML text is defined, which tomllib does not say.

    A small scanner over text tomllib already accepted: it follows table headers, dotted
    keys, inline tables and arrays (elements get their index as the last path part), and
    skips strings and comments. A path it did not see falls back to the nearest enclosing
    one, ending at the recipe's table header.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.starts = [0, *(m.end() for m in re.finditer("\n", text))]
        self.explicit: dict[KeyPath, int] = {}
        self.implicit: dict[KeyPath, int] = {}

    @classmethod
    def scan(cls, text: str) -> _KeyLines:
        lines = cls(text)
        with contextlib.suppress(_ScanError, IndexError, tomllib.TOMLDecodeError):
            lines._document()
        return lines

    def line(self, path: KeyPath) -> int | None:
        for n in range(len(path), 0, -1):
            found = self.explicit.get(path[:n]) or self.implicit.get(path[:n])
            if found is not None:
                return found
        return None

    def _record(self, path: KeyPath, pos: int) -> None:
        line = bisect.bisect_right(self.starts, pos)
        self.explicit.setdefault(path, line)
        for n in range(1, len(path)):
            self.implicit.setdefault(path[:n], line)

    def _peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def _blank(self, *, newlines: bool = False) -> None:
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c in " \t" or (newlines and c in "\r\n"):
                self.pos += 1
            elif newlines and c == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            else:
                return

    def _expect(self, token: str) -> None:
        if not self.text.startswith(token, self.pos):
            raise _ScanError(f"expected {token!r} at {self.pos}")
        self.pos += len(token)

    def _document(self) -> None:
        table: KeyPath = ()
        while True:
            self._blank(newlines=True)
            if self.pos >= len(self.text):
                return
            start = self.pos
            if self._peek() == "[":
                double = self.text.startswith("[[", self.pos)
                self.pos += 2 if double else 1
                self._blank()
                table = self._key()
                self._blank()
                self._expect("]]" if double else "]")
                self._record(table, start)
            else:
                key = table + self._key()
                self._record(key, start)
                self._assignment_value(key)

    def _assignment_value(self, key: KeyPath) -> None:
        self._blank()
        self._expect("=")
        self._blank()
        self._value(key)

    def _key(self) -> KeyPath:
        parts: list[str | int] = [self._simple_key()]
        while True:
            self._blank()
            if self._peek() != ".":
                return tuple(parts)
            self.pos += 1
            self._blank()
            parts.append(self._simple_key())

    def _simple_key(self) -> str:
        if self._peek() in ("'", '"'):
            raw = self._string()
            value = tomllib.loads(f"k = {raw}")["k"]
            return str(value)
        match = _BARE_KEY.match(self.text, self.pos)
        if match is None:
            raise _ScanError(f"no key at {self.pos}")
        self.pos = match.end()
        return match.group()

    def _string(self) -> str:
        start = self.pos
        quote = self._peek()
        triple = self.text.startswith(quote * 3, self.pos)
        self.pos += 3 if triple else 1
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c == "\\" and quote == '"':
                self.pos += 2
            elif triple and self.text.startswith(quote * 3, self.pos):
                self.pos += 3
                for _ in range(2):  # up to two quotes may end the content
                    if self._peek() == quote:
                        self.pos += 1
                return self.text[start : self.pos]
            elif not triple and c == quote:
                self.pos += 1
                return self.text[start : self.pos]
            else:
                self.pos += 1
        raise _ScanError("unterminated string")

    def _value(self, path: KeyPath) -> None:
        c = self._peek()
        if c == "{":
            self.pos += 1
            self._blank(newlines=True)
            while self._peek() != "}":
                start = self.pos
                key = path + self._key()
                self._record(key, start)
                self._assignment_value(key)
                self._blank(newlines=True)
                if self._peek() == ",":
                    self.pos += 1
                    self._blank(newlines=True)
            self.pos += 1
        elif c == "[":
            self.pos += 1
            index = 0
            while True:
                self._blank(newlines=True)
                if self._peek() == "]":
                    self.pos += 1
                    return
                self._record((*path, index), self.pos)
                self._value((*path, index))
                index += 1
                self._blank(newlines=True)
                if self._peek() == ",":
                    self.pos += 1
        elif c in ("'", '"'):
            self._string()
        else:
            start = self.pos
            while self.pos < len(self.text) and self.text[self.pos] not in ",]}#\r\n":
                self.pos += 1
            if self.pos == start:
                raise _ScanError(f"no value at {start}")


class _Checker:
    """Checks the parsed file, one recipe at a time, collecting every problem."""

    def __init__(
        self,
        *,
        lines: _KeyLines,
        file: str,
        allowed_roots: list[Path],
        secrets_dir: Path,
        protected: list[Path],
    ) -> None:
        self.lines = lines
        self.file = file
        self.allowed_roots = allowed_roots
        self.secrets_dir = secrets_dir
        self.protected = protected
        self.problems: list[Problem] = []

    def add(self, path: KeyPath, message: str) -> None:
        self.problems.append(Problem(self.lines.line(path), message, self.file))

    def unknown_keys(
        self, table: Mapping[str, Any], allowed: Sequence[str], path: KeyPath, where: str
    ) -> None:
        for key in table:
            if key not in allowed:
                self.add((*path, key), f"unknown key {key!r} {where}{_suggest(key, allowed)}")

    def check(self, data: Mapping[str, Any]) -> dict[str, DeclaredRecipe]:
        self.unknown_keys(data, ("recipes",), (), "at the top level")
        recipes = data.get("recipes", {})
        if not isinstance(recipes, dict):
            self.add(("recipes",), f"recipes must be a table, got {_shown(recipes)}")
            return {}
        out: dict[str, DeclaredRecipe] = {}
        for name, table in recipes.items():
            before = len(self.problems)
            recipe = _RecipeCheck(self, name, table).run()
            if recipe is not None and len(self.problems) == before:
                out[name] = recipe
        return out


def check_workdir(
    path: Path,
    *,
    allowed_roots: Sequence[Path],
    protected: Sequence[Path] = (),
    homes: Sequence[Path] | None = None,
) -> tuple[Path | None, list[str]]:
    """The resolved workdir and what is wrong with it, each phrase following "workdir X".

    `homes` (default: this user's and root's) are where credentials usually are: a
    workdir above one that holds them is refused too. Best checked again at launch time:
    the directory may have changed since the file was loaded.
    """
    if not path.is_absolute():
        return None, ["must be an absolute path"]
    problems: list[str] = []
    blocked = blocked_component(path)
    if not path.exists():
        return None, ["does not exist"]
    if not path.is_dir():
        return None, ["is not a directory"]
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        return None, [f"cannot be resolved: {exc}"]
    blocked = blocked or blocked_component(resolved)
    if blocked is not None:
        problems.append(f"goes through {blocked!r}, which may hold credentials")
    roots = [_resolve(r) for r in allowed_roots]
    if not roots:
        problems.append("is not allowed: no recipe roots are configured (ASSISTANT_RECIPE_ROOTS)")
    elif not any(resolved.is_relative_to(root) for root in roots):
        shown = ", ".join(str(r) for r in roots)
        via = "is" if resolved == path else f"resolves to {resolved}, which is"
        problems.append(f"{via} outside the allowed roots ({shown})")
    for guarded in (_resolve(p) for p in protected):
        if resolved.is_relative_to(guarded) or guarded.is_relative_to(resolved):
            problems.append(f"overlaps {guarded}, which holds the assistant's secrets or state")
    problems.extend(_exposed(resolved, _homes() if homes is None else homes))
    return resolved, problems


def _homes() -> list[Path]:
    try:
        return [Path.home(), Path("/root")]
    except RuntimeError:
        return [Path("/root")]


def _exposed(workdir: Path, homes: Sequence[Path]) -> list[str]:
    """What mounting `workdir` would expose: credentials anywhere in its tree, or a home's."""
    in_homes: list[str] = []
    reported: set[Path] = set()
    for home in sorted({_resolve(h) for h in homes}):
        if home == workdir or not home.is_relative_to(workdir):
            continue  # the first case is the walk's, the second holds none of them
        for parts in (*((name,) for name in BLOCKED_NAMES), *BLOCKED_SEQUENCES):
            candidate = home.joinpath(*parts)
            if os.path.lexists(candidate):
                in_homes.append(f"holds {candidate}; mounting it would expose it")
                reported.add(candidate)
    found, trouble = credentials_in_tree(workdir)
    problems = [
        f"holds {str(rel)!r}; mounting it would expose it"
        for rel in found
        if workdir / rel not in reported
    ]
    if trouble is not None:
        problems.append(trouble)
    return problems + in_homes


def credentials_in_tree(
    root: Path, *, max_depth: int = MAX_WALK_DEPTH, max_entries: int = MAX_WALK_ENTRIES
) -> tuple[list[Path], str | None]:
    """Credential files and folders anywhere under `root` (relative paths), level by level.

    Symlinks are listed by name, never followed; a credential folder is reported, not
    entered. The walk is bounded: a tree with more than `max_entries` entries, deeper than
    `max_depth` levels, or with a folder that cannot be listed is not fully checked, and
    the second value says so (the caller refuses the folder: an unchecked tree is not
    mounted).
    """
    found: list[Path] = []
    level: list[Path] = [Path()]
    seen = 0
    for depth in range(max_depth + 1):
        below: list[Path] = []
        for rel in level:
            try:
                with os.scandir(root / rel) as it:
                    entries = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)
            except OSError as exc:
                where = "it" if rel == Path() else repr(str(rel))
                return found, (
                    f"cannot be fully checked for credentials: {where} cannot be listed"
                    f" ({exc.strerror})"
                )
            seen += len(entries)
            if seen > max_entries:
                return found, (
                    f"holds more than {max_entries:,} files and folders, more than the"
                    " credential check covers; declare a smaller folder (the code only)"
                )
            for name, is_dir in entries:
                child = rel / name
                if blocked_component(child) is not None:
                    found.append(child)
                elif is_dir:
                    below.append(child)
        if not below:
            return found, None
        if depth == max_depth:
            return found, (
                f"is more than {max_depth} folders deep, more than the credential check"
                " covers; declare a shallower folder (the code only)"
            )
        level = below
    return found, None


class _RecipeCheck:
    """One `[recipes.<name>]` table into a `DeclaredRecipe`; every mistake goes to the checker.

    Each part returns a usable value even when it found problems, so one pass reports
    them all; the checker drops the recipe if any were found.
    """

    def __init__(self, checker: _Checker, name: str, table: object) -> None:
        self.c = checker
        self.name = name
        self.table = table
        self.path: KeyPath = ("recipes", name)
        self.where = f"in recipe {name!r}"
        self.groups: set[str] = set()  # named groups of every progress/metrics regex
        self.faulty: set[str] = set()  # parameters with a problem already reported

    def add(self, keys: KeyPath, message: str) -> None:
        self.c.add((*self.path, *keys), message)

    def wrong(self, keys: KeyPath, what: str, where: str, expected: str, value: object) -> None:
        self.add(keys, f"{what} {where} must be {expected}, got {_shown(value)}")

    def run(self) -> DeclaredRecipe | None:
        self.check_name()
        if not isinstance(self.table, dict):
            self.wrong((), "recipe", repr(self.name), "a table", self.table)
            return None
        t: dict[str, Any] = self.table
        self.c.unknown_keys(t, RECIPE_KEYS, self.path, self.where)
        workdir = self.workdir(t)
        writable = self.boolean(t, "workdir_writable", False)
        if writable and "workdir" not in t:
            self.add(("workdir_writable",), f"workdir_writable is set {self.where}, but no workdir")
        params, kinds = self.params(t)
        if "command" not in t:
            self.add((), f"recipe {self.name!r} has no command")
        command = self.templates(
            t.get("command", []),
            ("command",),
            "command",
            kinds,
            has_workdir="workdir" in t,
            resume=False,
        )
        if "command" in t and isinstance(t["command"], list) and not t["command"]:
            self.add(("command",), f"command {self.where} is empty")
        elif command and not command[0]:
            self.add(("command", 0), f"command {self.where} starts with an empty program name")
        env = self.env(t)
        progress = self.progress(t, kinds)
        key_metric, mode = self.key_metric(t, progress)
        resume = self.resume(t, kinds, has_workdir="workdir" in t, writable=writable)
        self.unused(kinds, (*command, *(resume.args if resume else ())))
        return DeclaredRecipe(
            name=self.name,
            summary=self.string(t, "summary", ""),
            image=self.image(t),
            workdir=workdir,
            workdir_writable=writable,
            command=command,
            params=params,
            gpus=self.gpus(t),
            memory_mb=self.memory(t),
            cpus=self.cpus(t),
            time_limit_s=self.time_limit(t),
            env=env,
            secrets=self.secrets(t, {name for name, _ in env}),
            network=self.boolean(t, "network", False),
            progress=progress,
            resume=resume,
            key_metric=key_metric,
            key_metric_mode=mode,
            line=self.c.lines.line(self.path) or 0,
        )

    def unused(self, kinds: Mapping[str, str], templates: Iterable[str]) -> None:
        """A parameter no template names does nothing: most likely a typo on one side."""
        used: set[str] = set()
        for template in templates:
            with contextlib.suppress(ValueError):
                used.update(template_fields(template))
        for name in kinds:
            if name not in used and name not in self.faulty:
                self.add(
                    ("params", name),
                    f"parameter {name!r} {self.where} is used by no command or resume argument",
                )

    def check_name(self) -> None:
        if not RECIPE_NAME.fullmatch(self.name):
            self.add(
                (),
                f"recipe name {self.name!r} must be 1 to 40 lowercase letters, digits, _ or -, "
                "starting with a letter",
            )
        if self.name in RESERVED_NAMES:
            taken = ", ".join(RESERVED_NAMES)
            self.add((), f"recipe name {self.name!r} is taken by a built-in ({taken})")

    def string(self, t: Mapping[str, Any], key: str, default: str) -> str:
        value = t.get(key, default)
        if not isinstance(value, str):
            self.wrong((key,), key, self.where, "a string", value)
            return default
        return value

    def boolean(self, t: Mapping[str, Any], key: str, default: bool) -> bool:
        value = t.get(key, default)
        if not isinstance(value, bool):
            self.wrong((key,), key, self.where, "true or false", value)
            return default
        return value

    def image(self, t: Mapping[str, Any]) -> str | None:
        if "image" not in t:
            return None
        value = t["image"]
        if not isinstance(value, str) or not IMAGE_REF.fullmatch(value):
            self.wrong(
                ("image",), "image", self.where, 'an image name like "nanogpt:latest"', value
            )
            return None
        return value

    def workdir(self, t: Mapping[str, Any]) -> str | None:
        if "workdir" not in t:
            return None
        value = t["workdir"]
        if not isinstance(value, str) or not value:
            self.wrong(("workdir",), "workdir", self.where, "an absolute path", value)
            return None
        resolved, problems = check_workdir(
            Path(value), allowed_roots=self.c.allowed_roots, protected=self.c.protected
        )
        for problem in problems:
            self.add(("workdir",), f"workdir {value} {self.where} {problem}")
        return None if resolved is None else str(resolved)

    def params(self, t: Mapping[str, Any]) -> tuple[tuple[Param, ...], dict[str, str]]:
        """The parameters, and the type of every declared name ("?" where unknown)."""
        raw = t.get("params", {})
        if not isinstance(raw, dict):
            self.wrong(("params",), "params", self.where, "a table of parameters", raw)
            return (), {}
        params: list[Param] = []
        kinds: dict[str, str] = {}
        for name, decl in raw.items():
            before = len(self.c.problems)
            kinds[name] = "?"
            param = self.param_entry(name, decl, kinds)
            if param is not None:
                params.append(param)
            if len(self.c.problems) > before:
                self.faulty.add(name)
        return tuple(params), kinds

    def param_entry(self, name: str, decl: object, kinds: dict[str, str]) -> Param | None:
        keys: KeyPath = ("params", name)
        where = f"in parameter {name!r} of recipe {self.name!r}"
        self.param_name(name, keys)
        if not isinstance(decl, dict):
            expected = 'a table like { type = "int", default = 1 }'
            self.wrong(keys, "parameter", repr(name), expected, decl)
            return None
        self.c.unknown_keys(decl, PARAM_KEYS, (*self.path, *keys), where)
        kind = decl.get("type")
        if kind not in _PARAM_TYPES:
            got = "no type" if kind is None else f"type {kind!r}"
            hint = _suggest(kind, _PARAM_TYPES) if isinstance(kind, str) else ""
            self.add(
                (*keys, "type"),
                f"parameter {name!r} {self.where} has {got}; use int, float, str or bool{hint}",
            )
            return None
        kinds[name] = kind
        return self.param(name, kind, decl, keys, where)

    def param_name(self, name: str, keys: KeyPath) -> None:
        if not _PARAM_NAME.fullmatch(name):
            self.add(
                keys,
                f"parameter name {name!r} {self.where} must be 1 to 40 lowercase letters, "
                "digits or _, starting with a letter (chat lowercases what it is given)",
            )
        if name in RUN_PARAM_NAMES:
            self.add(
                keys, f"parameter {name!r} {self.where} clashes with the run parameter {name}="
            )
        elif name in BUILTIN_FIELDS:
            self.add(keys, f"parameter {name!r} {self.where} clashes with the built-in {{{name}}}")

    def param(
        self, name: str, kind: str, decl: Mapping[str, Any], keys: KeyPath, where: str
    ) -> Param | None:
        help_text = decl.get("help", "")
        if not isinstance(help_text, str):
            self.wrong((*keys, "help"), "help", where, "a string", help_text)
            help_text = ""
        bounds: dict[str, float] = {}
        for bound in ("min", "max"):
            if bound not in decl:
                continue
            value = decl[bound]
            if kind in ("str", "bool"):
                self.add(
                    (*keys, bound), f"{bound} {where}: only int and float parameters have bounds"
                )
            elif not _is_number(value) or not math.isfinite(value):
                self.wrong((*keys, bound), bound, where, "a finite number", value)
            elif kind == "int" and not float(value).is_integer():
                self.wrong(
                    (*keys, bound), bound, where, "a whole number (the parameter is an int)", value
                )
            else:
                bounds[bound] = float(value)
        low, high = bounds.get("min"), bounds.get("max")
        if low is not None and high is not None and low > high:
            self.add((*keys, "min"), f"min {low:g} is above max {high:g} {where}")
            low = high = None  # one mistake, one problem: the default is not checked against them
        choices = self.choices(kind, decl, keys, where)
        if "default" not in decl:
            self.add(keys, f"parameter {name!r} {self.where} needs a default")
            return None
        default = decl["default"]
        if not _default_type_ok(kind, default):
            self.wrong((*keys, "default"), "default", where, f"{_ARTICLE[kind]} {kind}", default)
            return None
        param = Param(name, _PARAM_TYPES[kind], default, help_text, low, high, choices)
        try:
            coerced = param.coerce(default)
        except ParamError as exc:
            self.add((*keys, "default"), f"default {where} is not allowed: {exc}")
            return None
        return Param(name, _PARAM_TYPES[kind], coerced, help_text, low, high, choices)

    def choices(
        self, kind: str, decl: Mapping[str, Any], keys: KeyPath, where: str
    ) -> tuple[str, ...] | None:
        if "choices" not in decl:
            if kind == "str":
                self.add(
                    keys,
                    f"str parameter {keys[-1]!r} {self.where} needs choices: text typed in chat "
                    "must never reach a command line unchecked",
                )
            return None
        value = decl["choices"]
        at: KeyPath = (*keys, "choices")
        if kind != "str":
            self.add(at, f"choices {where}: only str parameters take choices")
            return None
        if not isinstance(value, list) or not value:
            self.wrong(at, "choices", where, "a non-empty array of strings", value)
            return None
        out: list[str] = []
        for i, choice in enumerate(value):
            if not isinstance(choice, str):
                self.wrong((*at, i), f"choice {i}", where, "a string", choice)
            elif not _TOKEN.fullmatch(choice):
                self.add(
                    (*at, i),
                    f"choice {choice!r} {where} is not a plain token: use letters, digits and "
                    "_ . : / + = @ , - (no spaces or shell characters, no leading -)",
                )
            elif choice in out:
                self.add((*at, i), f"choice {choice!r} {where} is listed twice")
            else:
                out.append(choice)
        return tuple(out)

    def templates(
        self,
        value: object,
        keys: KeyPath,
        what: str,
        kinds: Mapping[str, str],
        *,
        has_workdir: bool,
        resume: bool,
    ) -> tuple[str, ...]:
        if not isinstance(value, list):
            self.wrong(keys, what, self.where, "an array of strings (one per argument)", value)
            return ()
        out: list[str] = []
        for i, template in enumerate(value):
            at: KeyPath = (*keys, i)
            label = f"{what}[{i}] {self.where}"
            if not isinstance(template, str):
                self.wrong(at, f"{what}[{i}]", self.where, "a string", template)
                continue
            out.append(template)
            try:
                names = template_fields(template)
            except ValueError as exc:
                self.add(at, f"bad template {label}: {exc}")
                continue
            for name in names:
                if name in kinds:
                    continue
                if name in RESUME_ONLY_FIELDS and not resume:
                    self.add(
                        at,
                        f"{label} names {{{name}}}, which is only known when resuming: "
                        f"use it in [recipes.{self.name}.resume] args",
                    )
                elif name == "workdir" and not has_workdir:
                    self.add(at, f"{label} names {{workdir}}, but no workdir is declared")
                elif name not in BUILTIN_FIELDS:
                    known = [*kinds, *(f for f in BUILTIN_FIELDS if resume or f != "checkpoint")]
                    self.add(
                        at,
                        f"{label} names {{{name}}}, which is not a declared parameter or a "
                        f"built-in{_suggest(name, known)}",
                    )
        return tuple(out)

    def gpus(self, t: Mapping[str, Any]) -> int:
        value = t.get("gpus", 1)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_GPUS:
            self.wrong(("gpus",), "gpus", self.where, f"an integer from 0 to {MAX_GPUS}", value)
            return 1
        return value

    def memory(self, t: Mapping[str, Any]) -> int | None:
        if "memory_mb" not in t:
            return None
        value = t["memory_mb"]
        if isinstance(value, bool) or not isinstance(value, int) or value < MIN_MEMORY_MB:
            expected = f"an integer of at least {MIN_MEMORY_MB}"
            self.wrong(("memory_mb",), "memory_mb", self.where, expected, value)
            return None
        return value

    def cpus(self, t: Mapping[str, Any]) -> float | None:
        if "cpus" not in t:
            return None
        value = t["cpus"]
        if not _is_number(value) or not math.isfinite(value) or value <= 0:
            self.wrong(("cpus",), "cpus", self.where, "a number above 0", value)
            return None
        return float(value)

    def time_limit(self, t: Mapping[str, Any]) -> float | None:
        if "time_limit" not in t:
            return None
        try:
            return parse_time_limit(t["time_limit"])
        except ValueError as exc:
            self.add(("time_limit",), f"time_limit {self.where}: {exc}")
            return None

    def env(self, t: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
        raw = t.get("env", {})
        if not isinstance(raw, dict):
            self.wrong(("env",), "env", self.where, 'a table of NAME = "value"', raw)
            return ()
        out: list[tuple[str, str]] = []
        for name, value in raw.items():
            at: KeyPath = ("env", name)
            self.env_name(name, at, "env")
            if not isinstance(value, str):
                self.wrong(at, f"env {name}", self.where, "a string", value)
            else:
                out.append((name, value))
        return tuple(out)

    def env_name(self, name: str, at: KeyPath, what: str) -> None:
        if not _ENV_NAME.fullmatch(name):
            self.add(
                at,
                f"{what} name {name!r} {self.where} must be uppercase letters, digits and _, "
                "not starting with a digit",
            )

    def secrets(self, t: Mapping[str, Any], env_names: set[str]) -> tuple[tuple[str, str], ...]:
        raw = t.get("secrets", {})
        if not isinstance(raw, dict):
            self.wrong(
                ("secrets",), "secrets", self.where, 'a table of ENV_VAR = "secret_name"', raw
            )
            return ()
        out: list[tuple[str, str]] = []
        for name, secret in raw.items():
            at: KeyPath = ("secrets", name)
            self.env_name(name, at, "secret variable")
            if name in env_names:
                self.add(at, f"{name} {self.where} is set both in env and in secrets")
            if not isinstance(secret, str):
                self.wrong(at, f"secret for {name}", self.where, "a secret's file name", secret)
            elif not _SECRET_NAME.fullmatch(secret) or ".." in secret:
                self.add(
                    at,
                    f"secret name {secret!r} {self.where} must be letters, digits, _ . - "
                    "(a file name in the secrets directory, no '..')",
                )
            elif not (self.c.secrets_dir / secret).is_file():
                found = f"not found in {self.c.secrets_dir}"
                self.add(at, f"secret {secret!r} {found} (for {name} {self.where})")
                out.append((name, secret))
            else:
                out.append((name, secret))
        return tuple(out)

    def progress(self, t: Mapping[str, Any], kinds: Mapping[str, str]) -> ProgressRules:
        empty = ProgressRules(None, (), (), None)
        raw = t.get("progress", {})
        keys: KeyPath = ("progress",)
        where = f"in the progress rules of recipe {self.name!r}"
        if not isinstance(raw, dict):
            self.wrong(keys, "progress", self.where, "a table", raw)
            return empty
        self.c.unknown_keys(raw, PROGRESS_KEYS, (*self.path, *keys), where)
        prefix = raw.get("json_prefix")
        if prefix is not None and (not isinstance(prefix, str) or not prefix.strip()):
            self.wrong((*keys, "json_prefix"), "json_prefix", where, "a non-empty string", prefix)
            prefix = None
        return ProgressRules(
            json_prefix=prefix,
            progress=self.regexes(raw, "progress", where),
            metrics=self.regexes(raw, "metrics", where),
            total=self.total(raw, kinds, where),
        )

    def regexes(self, raw: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
        value = raw.get(key, [])
        keys: KeyPath = ("progress", key)
        if not isinstance(value, list):
            self.wrong(keys, key, where, "an array of regexes", value)
            return ()
        out: list[str] = []
        for i, pattern in enumerate(value):
            at: KeyPath = (*keys, i)
            label = f"{key}[{i}] {where}"
            if not isinstance(pattern, str):
                self.wrong(at, f"{key}[{i}]", where, "a string", pattern)
                continue
            out.append(pattern)
            try:
                groups = list(re.compile(pattern).groupindex)
            except re.error as exc:
                position = "" if exc.pos is None else f" at position {exc.pos}"
                self.add(at, f"bad regex {label}: {exc.msg}{position}")
                continue
            self.groups.update(groups)
            for group in groups:
                if not _GROUP_NAME.fullmatch(group):
                    self.add(
                        at, f"group name {group!r} in {label} must be ASCII letters, digits, _"
                    )
            if key == "progress":
                if "step" not in groups:
                    self.add(at, f"{label} has no (?P<step>...) group: progress needs the step")
                for group in groups:
                    if group in _PROGRESS_RESERVED:
                        self.add(
                            at, f"group {group!r} in {label} is set by the assistant; rename it"
                        )
            elif not set(groups) - {"step"}:
                self.add(at, f"{label} names no metric: add a group like (?P<val_loss>[\\d.]+)")
        return tuple(out)

    def total(
        self, raw: Mapping[str, Any], kinds: Mapping[str, str], where: str
    ) -> str | int | None:
        if "total" not in raw:
            return None
        value = raw["total"]
        at: KeyPath = ("progress", "total")
        if isinstance(value, str):
            if value not in kinds:
                hint = _suggest(value, kinds)
                self.add(at, f"total {value!r} {where} is not a declared parameter{hint}")
            elif kinds[value] not in ("int", "?"):
                self.add(
                    at, f"total {value!r} {where} must name an int parameter, not a {kinds[value]}"
                )
            return value
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        self.wrong(
            at, "total", where, "an int parameter's name or a positive number of steps", value
        )
        return None

    def key_metric(
        self, t: Mapping[str, Any], progress: ProgressRules
    ) -> tuple[str, Literal["min", "max"]]:
        metric = "loss"
        if "key_metric" in t:
            value = t["key_metric"]
            if not isinstance(value, str) or not _METRIC_NAME.fullmatch(value):
                self.wrong(("key_metric",), "key_metric", self.where, "a metric name", value)
            else:
                metric = value
                regexes = progress.progress or progress.metrics
                if regexes and progress.json_prefix is None and metric not in self.groups:
                    self.add(
                        ("key_metric",),
                        f"key_metric {metric!r} {self.where} is never reported: no progress or "
                        f"metrics regex has a group (?P<{metric}>...)",
                    )
        mode = t.get("key_metric_mode", "min")
        if mode == "max":
            return metric, "max"
        if mode != "min":
            self.wrong(("key_metric_mode",), "key_metric_mode", self.where, '"min" or "max"', mode)
        return metric, "min"

    def resume(
        self, t: Mapping[str, Any], kinds: Mapping[str, str], *, has_workdir: bool, writable: bool
    ) -> ResumeRule | None:
        if "resume" not in t:
            return None
        raw = t["resume"]
        keys: KeyPath = ("resume",)
        where = f"in the resume rule of recipe {self.name!r}"
        if not isinstance(raw, dict):
            self.wrong(keys, "resume", self.where, "a table", raw)
            return None
        self.c.unknown_keys(raw, RESUME_KEYS, (*self.path, *keys), where)
        checkpoints = raw.get("checkpoints")
        if checkpoints is None:
            self.add(keys, f'checkpoints is missing {where}: a glob like "out/ckpt-*.pt"')
            checkpoints = ""
        elif not isinstance(checkpoints, str) or not checkpoints:
            self.wrong((*keys, "checkpoints"), "checkpoints", where, "a glob", checkpoints)
            checkpoints = ""
        elif Path(checkpoints).is_absolute() or ".." in Path(checkpoints).parts:
            self.add(
                (*keys, "checkpoints"),
                f"checkpoints {checkpoints!r} {where} must be relative to its location, "
                "without '..'",
            )
        location = raw.get("location", "run_dir")
        located: Literal["run_dir", "workdir"] = "run_dir"
        if location == "workdir":
            located = "workdir"
            if not has_workdir:
                self.add((*keys, "location"), f"location 'workdir' {where} needs a workdir")
            elif not writable:
                self.add(
                    (*keys, "location"),
                    f"location 'workdir' {where} needs workdir_writable = true: the command "
                    "writes its checkpoints there",
                )
        elif location != "run_dir":
            self.wrong((*keys, "location"), "location", where, '"run_dir" or "workdir"', location)
        args = self.templates(
            raw.get("args", []),
            (*keys, "args"),
            "resume args",
            kinds,
            has_workdir=has_workdir,
            resume=True,
        )
        return ResumeRule(checkpoints=checkpoints, location=located, args=args)


_ARTICLE = {"int": "an", "float": "a", "str": "a", "bool": "a"}


def _default_type_ok(kind: str, value: object) -> bool:
    """A default as TOML writes it: 5 for an int, 1e-3 or 1 for a float, "x", true."""
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return _is_number(value)
