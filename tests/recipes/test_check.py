"""`check_file`: compiler-style lines, a summary, and an exit status."""

from __future__ import annotations

from pathlib import Path

from assistant.recipes.check import check_file
from tests.support.recipe_host import Host

_TWO_GOOD = """\
[recipes.beta]
command = ["python", "b.py"]

[recipes.alpha]
command = ["python", "a.py"]
"""


def test_a_good_file(host: Host) -> None:
    path = host.write(_TWO_GOOD)
    assert check_file(path, [host.root], host.secrets) == (0, "2 recipes OK: alpha, beta")


def test_one_recipe(host: Host) -> None:
    path = host.write('[recipes.solo]\ncommand = ["x"]\n')
    assert check_file(path, [host.root], host.secrets) == (0, "1 recipe OK: solo")


def test_problems_come_first_with_path_and_line(host: Host) -> None:
    path = host.write(_TWO_GOOD + '\n[recipes.gamma]\ncomand = ["x"]\ncommand = ["y"]\ngpus = -1\n')
    status, text = check_file(path, [host.root], host.secrets)
    assert status == 1
    assert text.splitlines() == [
        f"{path}:8: unknown key 'comand' in recipe 'gamma' (did you mean 'command'?)",
        f"{path}:10: gpus in recipe 'gamma' must be an integer from 0 to 64, got an integer -1",
        "2 problems; 2 recipes OK: alpha, beta",
    ]


def test_a_syntax_error_loads_nothing(host: Host) -> None:
    path = host.write(_TWO_GOOD + "oops\n")
    status, text = check_file(path, [host.root], host.secrets)
    assert status == 1
    first, summary = text.splitlines()
    assert first.startswith(f"{path}:6: TOML syntax error: ")
    assert summary == "1 problem; 0 recipes OK"


def test_a_problem_without_a_line(host: Host) -> None:
    path = host.write(_TWO_GOOD)
    path.chmod(0o646)
    status, text = check_file(path, [host.root], host.secrets)
    assert status == 1
    assert text.splitlines()[0].startswith(f"{path}: {path} is writable by every user")


def test_a_missing_file_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "recipes.toml"
    assert check_file(path, [], tmp_path) == (0, f"{path} does not exist: no declared recipes")


def test_protected_paths_are_passed_on(host: Host) -> None:
    project = host.root / "project"
    project.mkdir()
    path = host.write(f'[recipes.r]\ncommand = ["x"]\nworkdir = "{project}"\n')
    assert check_file(path, [host.root], host.secrets)[0] == 0
    status, text = check_file(path, [host.root], host.secrets, protected=[project])
    assert status == 1
    assert f"overlaps {project.resolve()}" in text
