"""Where test helpers live: what tests share is in tests/support/, never in a test module.

A helper imported from another test module drags that module's tests and fixtures along,
and moving or deleting a test then breaks another folder. So a test module or conftest
imports from `tests.support` (helpers; fixtures shared across folders are its modules
listed in `pytest_plugins` of tests/conftest.py) and `tests.fakes` (the platforms' wire
protocols) only, never from another file under tests/.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SHARED = ("support", "fakes")


def _imports_of_other_test_files(path: Path) -> list[str]:
    """`module` for each import in `path` that names a file under tests/ outside SHARED."""
    found = []
    local = {p.stem for p in path.parent.glob("*.py")} - {path.stem}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if (parts[0] == "tests" and (len(parts) < 2 or parts[1] not in SHARED)) or parts[
                0
            ] in local:
                found.append(module)
    return found


def test_no_test_file_imports_another() -> None:
    offenders = {
        str(path.relative_to(TESTS)): modules
        for path in sorted(TESTS.rglob("*.py"))
        if path.relative_to(TESTS).parts[0] not in SHARED
        and (modules := _imports_of_other_test_files(path))
    }
    assert offenders == {}, "move what they share into tests/support/"


def test_the_rule_sees_both_kinds_of_import(tmp_path: Path) -> None:
    (tmp_path / "helpers_support.py").write_text("X = 1\n")
    test = tmp_path / "test_x.py"
    test.write_text(
        "from tests.runs.test_run_flow import ADMIN\nfrom helpers_support import X\n"
        "from tests.support.recording import RecordingChannel\nimport tests.fakes.otlp\n"
    )
    assert _imports_of_other_test_files(test) == ["tests.runs.test_run_flow", "helpers_support"]
