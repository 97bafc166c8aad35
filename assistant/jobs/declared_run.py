"""The in-run half of a declared recipe: its command line, and what its output says.

A declared recipe (ASSISTANT_HOME/recipes.toml) runs the admin's own command, which knows
nothing of our event protocol. The agent turns what it prints into protocol events:

- lines starting with the recipe's JSON prefix carry an event as JSON (`progress`,
  `metric`, `checkpoint`, `log`; see assistant/jobs/reporting.py for a helper that writes
  them);
- lines matching a `progress` regex become `progress` events (group `step`, the others as
  numbers: loss, lr, time_ms, ...);
- lines matching a `metrics` regex become one `metric` event per named group;
- files matching the checkpoint glob become `checkpoint` events once they stop changing.

Standard library only: it runs inside images we did not build.
"""

from __future__ import annotations

import json
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assistant.jobs.declared import DeclaredRecipe, from_json, render_args
from assistant.jobs.lines import LineTail
from assistant.jobs.protocol import EventWriter
from assistant.jobs.recipes import ParamError, lower_is_better

PASSED_THROUGH = ("progress", "metric", "checkpoint", "log")
PREFIX_ENV = "ASSISTANT_REPORT_PREFIX"
_NUMBER = re.compile(r"\d+")


class DeclaredSpecError(ValueError):
    """The declared part of spec.json does not make a command line."""


@dataclass(frozen=True)
class DeclaredJob:
    """Everything the agent needs to start and follow a declared recipe's command."""

    recipe: DeclaredRecipe
    params: dict[str, Any]
    argv: list[str]
    cwd: Path
    env: dict[str, str]  # added to the agent's environment (secrets included: never log it)
    secrets: tuple[str, ...]  # their values, masked in the command's output
    checkpoint_root: Path  # where the checkpoint glob is anchored
    total: int | None
    resumed_from: str | None


def build_job(raw: dict[str, Any], run_dir: Path) -> DeclaredJob:
    """Check the declared part of spec.json and render the command.

    :raises DeclaredSpecError: in words fit for a chat message.
    """
    try:
        recipe = from_json(raw["declared"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DeclaredSpecError(f"declared recipe unreadable: {exc}") from None
    given = raw.get("params") or {}
    if not isinstance(given, dict):
        raise DeclaredSpecError("params must be an object")
    by_name = {p.name: p for p in recipe.params}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        raise DeclaredSpecError(f"unknown parameter(s) for {recipe.name}: {', '.join(unknown)}")
    try:
        params = {p.name: p.coerce(given.get(p.name, p.default)) for p in recipe.params}
        values = {name: by_name[name].format(v) for name, v in params.items()}
    except ParamError as exc:
        raise DeclaredSpecError(str(exc)) from None
    paths = raw.get("paths") or {}
    run_view = str(paths.get("run_dir") or run_dir)
    workdir_view = str(paths.get("workdir") or "")
    values.update(
        gpus=str(int(raw.get("gpus", 0))),
        nproc=str(int(raw.get("nproc", 1))),
        run_dir=run_view,
        workdir=workdir_view,
    )
    resume_from = raw.get("resume_from")
    root = Path(run_view)
    if recipe.resume is not None and recipe.resume.location == "workdir" and workdir_view:
        root = Path(workdir_view)
    try:
        argv = render_args(recipe.command, values)
        if resume_from is not None:
            if recipe.resume is None:
                raise DeclaredSpecError(f"recipe {recipe.name!r} declares no way to resume")
            checkpoint = str(_inside(root, str(resume_from)))
            argv += render_args(recipe.resume.args, {**values, "checkpoint": checkpoint})
    except (KeyError, ValueError) as exc:
        if isinstance(exc, DeclaredSpecError):
            raise
        raise DeclaredSpecError(f"command template of {recipe.name!r}: {exc}") from None
    env = dict(recipe.env)
    secrets = _read_secrets(raw.get("secret_files") or {})
    env.update(secrets)
    if recipe.progress.json_prefix:
        env[PREFIX_ENV] = recipe.progress.json_prefix
    total = recipe.progress.total
    if isinstance(total, str):
        total = int(params[total]) if total in params else None
    return DeclaredJob(
        recipe=recipe,
        params=params,
        argv=argv,
        cwd=Path(workdir_view) if workdir_view else run_dir,
        env=env,
        secrets=tuple(secrets.values()),
        checkpoint_root=root,
        total=total,
        resumed_from=None if resume_from is None else str(resume_from),
    )


def _inside(root: Path, rel: str) -> Path:
    path = Path(rel)
    if path.is_absolute() or ".." in path.parts:
        raise DeclaredSpecError(f"checkpoint {rel!r} must be a path inside {root}")
    return root / path


def _read_secrets(files: dict[str, str]) -> dict[str, str]:
    """Secret values from the files the host wrote for this launch, which go at once.

    A missing one fails the start; a value is never shown, only the variable's name.
    """
    out = {}
    for env_name, path in files.items():
        try:
            out[str(env_name)] = Path(path).read_text().rstrip("\n")
        except OSError as exc:
            raise DeclaredSpecError(f"secret for {env_name} unreadable: {exc.strerror}") from None
        finally:
            Path(path).unlink(missing_ok=True)
    return out


@dataclass
class OutputFollower:
    """Reads the command's new output lines and writes the events they stand for."""

    job: DeclaredJob
    writer: EventWriter
    path: Path
    offset: int
    step: int | None = None
    final: dict[str, float] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    _lines: LineTail = field(init=False, repr=False)
    _progress: list[re.Pattern[str]] = field(default_factory=list)
    _metrics: list[re.Pattern[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lines = LineTail(self.path, self.offset)
        rules = self.job.recipe.progress
        self._progress = [re.compile(p) for p in rules.progress]
        self._metrics = [re.compile(p) for p in rules.metrics]

    def poll(self, *, final: bool = False) -> None:
        for line in self._lines.read(final=final):
            self.line(line.decode(errors="replace").rstrip("\r"))

    def line(self, text: str) -> None:
        prefix = self.job.recipe.progress.json_prefix
        if prefix and text.startswith(prefix):
            self._structured(text[len(prefix) :])
            return
        for pattern in self._progress:
            match = pattern.search(text)
            if match:
                fields = numbers(match)
                step = fields.pop("step", None)
                if step is not None:
                    self._emit("progress", {"step": int(step), **fields})
                return
        for pattern in self._metrics:
            match = pattern.search(text)
            if match:
                fields = numbers(match)
                step = int(fields.pop("step", self.step or 0))
                for name, value in fields.items():
                    self._emit("metric", {"step": step, "name": name, "value": value})
                return

    def _structured(self, text: str) -> None:
        try:
            event = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nested thousands deep
            return
        if not isinstance(event, dict) or event.get("type") not in PASSED_THROUGH:
            return
        kind = str(event.pop("type"))
        event.pop("ts", None)
        problem = _malformed(kind, event)
        if problem is None and kind == "checkpoint":
            relative = self._relative(event["path"])
            if relative is None:
                problem = f"checkpoint {event['path']!r} is not inside {self.job.checkpoint_root}"
            else:
                event["path"] = relative
        if problem is not None:
            self.writer.emit("log", level="warning", message=f"report line ignored: {problem}")
            return
        self._emit(kind, event)

    def _relative(self, path: str) -> str | None:
        """A checkpoint path as the host stores it: relative to the checkpoint root, or None
        for one outside it or reached through a symlink (the host would refuse it)."""
        p = Path(path)
        if p.is_absolute():
            try:
                p = p.relative_to(self.job.checkpoint_root)
            except ValueError:
                return None
        if ".." in p.parts or not p.parts:
            return None
        return str(p) if _no_link_on_the_way(self.job.checkpoint_root, p) else None

    def _emit(self, kind: str, fields: dict[str, Any]) -> None:
        step = fields.get("step")
        if isinstance(step, int) and not isinstance(step, bool):
            self.step = step
        if kind == "progress":
            if self.job.total is not None:
                fields.setdefault("total", self.job.total)
            for name, value in fields.items():
                if name not in ("step", "total") and _is_number(value):
                    self.final[name] = float(value)
        elif kind == "metric" and _is_number(fields.get("value")):
            name, value = str(fields.get("name")), float(fields["value"])
            self.final[name] = value
            self._keep_best(name, value)
        self.writer.emit(kind, **fields)

    def _keep_best(self, name: str, value: float) -> None:
        recipe = self.job.recipe
        lower = lower_is_better(name, recipe.key_metric, recipe.key_metric_mode)
        current = self.best.get(name)
        if current is None or (value < current if lower else value > current):
            self.best[name] = value


def _malformed(kind: str, event: dict[str, Any]) -> str | None:
    """What is wrong with a structured report line's shape, in a few words; None if fine."""
    step = event.get("step")
    if kind == "progress" and not (isinstance(step, int) and not isinstance(step, bool)):
        return "progress needs an integer step"
    if kind == "metric" and not (
        isinstance(event.get("name"), str) and _is_number(event.get("value"))
    ):
        return "a metric needs a text name and a number value"
    if kind == "checkpoint" and not (isinstance(event.get("path"), str) and event["path"]):
        return "a checkpoint needs a text path"
    if step is not None and not (isinstance(step, int) and not isinstance(step, bool)):
        return "step must be an integer"
    return None


def _no_link_on_the_way(root: Path, rel: Path) -> bool:
    """No symlink from `root` down to `root/rel`, the file itself included."""
    path = root
    for part in rel.parts:
        path = path / part
        if path.is_symlink():
            return False
    return True


def numbers(match: re.Match[str]) -> dict[str, float]:
    """A declared pattern's named groups as numbers (a run's output and a watched job's
    alike); a group that is no number, or a step that is no whole number (`inf`, `2.5`),
    is left out rather than failing the line."""
    out: dict[str, float] = {}
    for name, text in match.groupdict().items():
        if text is None:
            continue
        try:
            value = float(text)
        except ValueError:
            continue
        if name == "step":
            if not value.is_integer() or not 0 <= value < 2**53:
                continue
            out[name] = int(value)
        else:
            out[name] = value
    return out


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class CheckpointWatcher:
    """Turns files matching the recipe's checkpoint glob into `checkpoint` events.

    A file is announced once it looks the same on two looks in a row (a half-written
    checkpoint is never offered for resume); `final=True` announces what is left.
    """

    root: Path
    pattern: str
    seen: dict[str, tuple[int, int]] = field(default_factory=dict)
    pending: dict[str, tuple[int, int]] = field(default_factory=dict)
    latest: str | None = None

    def prime(self) -> None:
        """What exists before the command starts (an earlier attempt's) is not news."""
        self.seen = self._look()

    def _look(self) -> dict[str, tuple[int, int]]:
        out = {}
        for path in self.root.glob(self.pattern):
            rel = path.relative_to(self.root)
            # a link (or a folder link on the way) is not a checkpoint: the host refuses it
            if ".." in rel.parts or not _no_link_on_the_way(self.root, rel):
                continue
            try:
                st = path.lstat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out[str(rel)] = (st.st_mtime_ns, st.st_size)
        return out

    def poll(self, step: int | None, emit: EventWriter, *, final: bool = False) -> None:
        now = self._look()
        ready = []
        for rel, sig in now.items():
            if self.seen.get(rel) == sig:
                continue
            if final or self.pending.get(rel) == sig:
                ready.append((sig[0], rel))
        self.pending = {rel: sig for rel, sig in now.items() if self.seen.get(rel) != sig}
        for _, rel in sorted(ready):
            self.seen[rel] = now[rel]
            self.pending.pop(rel, None)
            self.latest = rel
            emit.emit("checkpoint", step=_step_of(rel, step), path=rel, best=False)


def _step_of(rel: str, last_step: int | None) -> int | None:
    """The step a checkpoint holds: the last number in its name if it is plausible."""
    numbers = [int(n) for n in _NUMBER.findall(Path(rel).name)]
    if numbers and (last_step is None or numbers[-1] <= last_step):
        return numbers[-1]
    return last_step
