"""errors.py draws the whole exception tree; the drawing is the classes as they are."""

from __future__ import annotations

import importlib
import pkgutil
import re

import assistant
import assistant.errors
import commands
import storage
from assistant.errors import OpsError

_NODE = re.compile(r"^(?P<indent>[ │]*)[├└]── (?P<name>\w+)")


def _drawn() -> dict[str, str]:
    """Each class in the docstring's tree -> the class it hangs under."""
    doc = assistant.errors.__doc__ or ""
    parents: dict[str, str] = {}
    stack = ["OpsError"]
    for line in doc.splitlines():
        match = _NODE.match(line)
        if match is None:
            continue
        depth = len(match["indent"]) // 5 + 1
        del stack[depth:]
        parents[match["name"]] = stack[-1]
        stack.append(match["name"])
    return parents


def _real() -> dict[str, str]:
    """Every subclass of OpsError the project defines (its in-run code excluded: it imports
    nothing from the host) -> its base."""
    for package in (assistant, commands, storage):
        for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if module.name.startswith("assistant.jobs") or module.name.endswith("__main__"):
                continue
            importlib.import_module(module.name)
    parents: dict[str, str] = {}
    todo: list[type[BaseException]] = [OpsError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.split(".")[0] in ("assistant", "commands", "storage"):
                parents[sub.__name__] = cls.__name__
                todo.append(sub)
    return parents


def test_the_drawn_tree_is_the_class_hierarchy() -> None:
    drawn = _drawn()
    assert "Refused" in drawn and drawn["StateError"] == "Refused"
    assert drawn == _real()
