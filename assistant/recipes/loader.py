"""Load ASSISTANT_HOME/recipes.toml: parse it, check it against the models, say where.

Every problem is reported with its line (`recipes.toml:12: ...`): tomllib's own for a
syntax error, else the line of the key pydantic names, found by `lines.KeyLines`. A recipe
with any problem is left out, the others load. Values are checked one by one and every
wrong one is reported at once; a rule that relates values of one table (a parameter's
default within its bounds, a choice listed twice) is checked once those values are right.
"""

from __future__ import annotations

import re
import stat
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from assistant.jobs.declared import DeclaredRecipe
from assistant.recipes.lines import KeyLines, KeyPath
from assistant.recipes.model import (
    BoolParam,
    FloatParam,
    IntParam,
    Progress,
    Recipe,
    RecipesFile,
    Resume,
    StrParam,
)
from assistant.recipes.rules import LABEL, PARAM, WHERE, Host, RecipeName, kind_of, suggest
from assistant.recipes.workdir import resolve

_SYNTAX_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_SYNTAX_END = re.compile(r"\s*\(at end of document\)\s*$")
_PARAM_MODELS: dict[str, type[BaseModel]] = {
    "int": IntParam,
    "float": FloatParam,
    "str": StrParam,
    "bool": BoolParam,
}
_NAME = TypeAdapter(RecipeName)


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
    lines = KeyLines.scan(text)
    found: list[Problem] = []

    def report(errors: list[ErrorDetails], base: KeyPath) -> None:
        for path, message in _messages(errors, base):
            found.append(Problem(lines.line(path), message, file))

    # the top level first, each recipe on its own: one recipe's mistakes leave the rest
    recipes_raw = data.get("recipes")
    top = {k: {} if k == "recipes" and isinstance(v, dict) else v for k, v in data.items()}
    try:
        RecipesFile.model_validate(top)
    except ValidationError as exc:
        report(exc.errors(), ())
    recipes: dict[str, DeclaredRecipe] = {}
    for name, table in (recipes_raw if isinstance(recipes_raw, dict) else {}).items():
        before = len(found)
        try:
            _NAME.validate_python(name)
        except ValidationError as exc:
            report(exc.errors(), ("recipes", name))
        host = Host(
            allowed_roots=[resolve(r) for r in allowed_roots],
            secrets_dir=secrets_dir,
            protected=[resolve(p) for p in (secrets_dir, *protected)],
            recipe=name,
        )
        try:
            recipe = Recipe.model_validate(table, context=host)
        except ValidationError as exc:
            report(exc.errors(), ("recipes", name))
            continue
        if len(found) == before:
            recipes[name] = recipe.declared(name, lines.line(("recipes", name)) or 0)
    problems = sorted(found, key=lambda p: p.line or 0)
    return LoadResult(recipes=recipes, problems=problems, mtime_ns=mtime_ns)


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


def _messages(errors: list[ErrorDetails], base: KeyPath) -> list[tuple[KeyPath, str]]:
    """Each pydantic error as (the key path it is about, a message an admin can act on)."""
    out: list[tuple[KeyPath, str]] = []
    for err in errors:
        loc = _plain(tuple(err["loc"]))
        ctx: dict[str, Any] = dict(err.get("ctx") or {})
        if err["type"] == "recipe":
            for at, text in ctx.get("all") or [(ctx.get("at", ()), ctx["text"])]:
                place = (*loc, *at)
                out.append(((*base, *place), _fill(text, base, place)))
            continue
        out.append(((*base, *loc), _message(err, base, loc, ctx)))
    return out


def _plain(loc: KeyPath) -> KeyPath:
    """The key path in the file: without pydantic's tags for a parameter's type and keys."""
    if len(loc) >= 3 and loc[0] == "params" and loc[2] in _PARAM_MODELS:
        loc = (*loc[:2], *loc[3:])
    return tuple(part for part in loc if part != "[key]")


def _fill(text: str, base: KeyPath, loc: KeyPath) -> str:
    what, where = _label(base, loc)
    param = str(loc[1]) if len(loc) > 1 and loc[0] in ("params", "secrets") else ""
    return text.replace(LABEL, f"{what} {where}").replace(WHERE, where).replace(PARAM, param)


def _table(
    base: KeyPath, loc: KeyPath, *, inside: bool = False
) -> tuple[str, type[BaseModel] | None, KeyPath]:
    """The table holding `loc`: how a message names it, its model, the path inside it.

    `inside`: `loc` is itself the table (an unknown or missing key of it).
    """
    if not base:
        return ("at the top level" if inside else ""), RecipesFile, loc
    recipe = f"recipe {base[1]!r}"
    least = 1 if inside else 2
    if len(loc) >= 2 and loc[0] == "params":
        return f"in parameter {loc[1]!r} of {recipe}", None, loc[2:]
    if len(loc) >= least and loc[0] == "progress":
        return f"in the progress rules of {recipe}", Progress, loc[1:]
    if len(loc) >= least and loc[0] == "resume" and loc[1:2] != ("args",):
        return f"in the resume rule of {recipe}", Resume, loc[1:]
    return f"in {recipe}", Recipe, loc


def _label(base: KeyPath, loc: KeyPath) -> tuple[str, str]:
    """("command[2]", "in recipe 'r'"): what a message is about, and where that is."""
    where, _model, rest = _table(base, loc)
    if not loc:
        return f"recipe {base[1]!r}", ""
    if not rest:
        return str(loc[-1]), where
    if rest[:2] == ("resume", "args"):
        return ("resume args" if len(rest) < 3 else f"resume args[{rest[2]}]"), where
    if rest[0] == "choices" and len(rest) > 1:
        return f"choice {rest[1]}", where
    if rest[0] == "env" and len(rest) > 1:
        return f"env {rest[1]}", where
    if rest[0] == "secrets" and len(rest) > 1:
        return f"secret for {rest[1]}", where
    if len(rest) > 1 and isinstance(rest[1], int):
        return f"{rest[0]}[{rest[1]}]", where
    return str(rest[-1]), where


def _message(err: ErrorDetails, base: KeyPath, loc: KeyPath, ctx: dict[str, Any]) -> str:
    kind = err["type"]
    value = err["input"]
    where, model, _ = _table(base, loc[:-1], inside=True)
    if kind == "extra_forbidden":
        key = str(loc[-1])
        if model is None:  # a parameter's table
            tagged = tuple(err["loc"])
            model = _PARAM_MODELS.get(str(tagged[2])) if len(tagged) > 2 else None
            if key in ("min", "max"):
                return f"{key} {where}: only int and float parameters have bounds"
            if key == "choices":
                return f"choices {where}: only str parameters take choices"
        known = list(model.model_fields) if model is not None else []
        return f"unknown key {key!r} {where}{suggest(key, known)}"
    recipe = repr(base[1]) if base else ""
    if kind == "missing":
        key = str(loc[-1])
        if key == "command" and len(loc) == 1:
            return f"recipe {recipe} has no command"
        if loc[0] == "params" and key == "default":
            return f"parameter {loc[1]!r} in recipe {recipe} needs a default"
        if loc[0] == "params" and key == "choices":
            return (
                f"str parameter {loc[1]!r} in recipe {recipe} needs choices: text typed in "
                "chat must never reach a command line unchecked"
            )
        if key == "checkpoints":
            return f'checkpoints is missing {where}: a glob like "out/ckpt-*.pt"'
        return f"{key} is missing {where}"
    if kind in ("union_tag_not_found", "union_tag_invalid"):
        got = "no type" if kind == "union_tag_not_found" else f"type {ctx.get('tag')!r}"
        tag = ctx.get("tag")
        hint = suggest(tag, _PARAM_MODELS) if isinstance(tag, str) else ""
        return (
            f"parameter {loc[1]!r} in recipe {recipe} has {got}; use int, float, str or bool{hint}"
        )
    what, where = _label(base, loc)
    if kind == "expected":
        return _join(what, where, f"must be {ctx['expected']}, got {_shown(value)}")
    if loc and loc[0] == "params" and len(loc) == 2:
        expected = 'a table like { type = "int", default = 1 }'
        return f"parameter {loc[1]!r} in recipe {recipe} must be {expected}, got {_shown(value)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return _join(what, where, f"must be a table, got {_shown(value)}")
    return f"{_join(what, where)}: {err['msg']}"


def _join(*parts: str) -> str:
    return " ".join(part for part in parts if part)


def _shown(value: object) -> str:
    """A value in a message: its kind, and the value itself when short."""
    if isinstance(value, dict | list):
        return kind_of(value)
    text = repr(value)
    return f"{kind_of(value)} {text}" if len(text) <= 40 else kind_of(value)
