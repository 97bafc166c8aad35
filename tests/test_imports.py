"""The import graph of the service: no cycles, and the in-run code stands alone.

The layers themselves (channels and commands, then operations, then runs and the scheduler,
then storage) are import-linter's contract in pyproject.toml, checked by `lint-imports` in
scripts/test. These tests cover what that contract cannot say.

Imports under `if TYPE_CHECKING:` count here. They never run, so they cannot fail at
import time, but they are still dependencies: mypy resolves both modules together and a
reader must understand one to understand the other, so a cycle through a type-only import
ties two modules just as a run-time one does (the issue's `services -> runs.manager ->
commands.registry -> services` circle was type-only). Cycles of either kind must be none.
"""

from __future__ import annotations

from functools import cache

import grimp

PACKAGES = ("assistant", "commands", "storage")


@cache
def _graph(type_checking: bool) -> grimp.ImportGraph:
    # no cache: a cache keyed on file times can miss an edit made within the same tick
    return grimp.build_graph(
        *PACKAGES, exclude_type_checking_imports=not type_checking, cache_dir=None
    )


def _edges(type_checking: bool) -> dict[str, set[str]]:
    graph = _graph(type_checking)
    return {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle, each once, starting at its smallest module (the graph is small)."""
    order = sorted(edges)
    found: list[list[str]] = []

    def walk(start: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(path[-1], ())):
            if nxt == start:
                found.append(list(path))
            elif nxt > start and nxt not in path:
                walk(start, [*path, nxt])

    for start in order:
        walk(start, [start])
    return found


def _show(cycle: list[str], runtime: dict[str, set[str]]) -> str:
    def short(module: str) -> str:
        return module.removeprefix("assistant.")

    text = short(cycle[0])
    for a, b in zip(cycle, [*cycle[1:], cycle[0]], strict=True):
        text += (" → " if b in runtime[a] else " ⇢ ") + short(b)
    return text


def test_no_import_cycle_at_run_time() -> None:
    runtime = _edges(type_checking=False)
    assert [_show(c, runtime) for c in _cycles(runtime)] == []


def test_no_import_cycle_through_type_only_imports_either() -> None:
    # each cycle shown from the module with the smallest full name; "⇢" a type-only import
    runtime = _edges(type_checking=False)
    assert [_show(c, runtime) for c in _cycles(_edges(type_checking=True))] == []


def test_the_in_run_code_imports_only_itself() -> None:
    """assistant/jobs/ is copied into the run image and runs without the service."""
    graph = _graph(type_checking=True)
    outside = {
        (m, imported)
        for m in graph.find_descendants("assistant.jobs") | {"assistant.jobs"}
        for imported in graph.find_modules_directly_imported_by(m)
        if imported != "assistant.jobs" and not imported.startswith("assistant.jobs.")
    }
    assert outside == set()


def test_the_cycle_finder_finds_a_cycle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert _cycles(edges) == [["a", "b", "c"]]
    assert _show(["a", "b", "c"], {"a": {"b"}, "b": set(), "c": {"a"}}) == "a → b ⇢ c → a"
