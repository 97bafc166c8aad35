"""The project's dependencies: every package its code imports is declared in pyproject.toml,
every declared one is used (or says here what for), and the lock, constraints.txt, holds
each at one version, torch's the same as every script and Dockerfile installs.

An import that is not declared works only while something else happens to bring it (yarl
came with aiohttp); a declared package nothing uses is installed on every host for nothing
(slack-bolt was); a version not pinned lets a new release turn a green build red.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterator, Mapping
from functools import cache
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("assistant", "commands", "storage")
# where a declared package may be used: the service, its tests and its benchmarks
USERS = (*PACKAGES, "tests", "bench")
LOCK = ROOT / "constraints.txt"

# Declared and never imported by our code: what each one is there for.
NOT_IMPORTED = {
    "import-linter": "lint-imports, the layers check scripts/test runs",
    "ruff": "the linter and formatter scripts/test runs",
    "pytest-asyncio": "the pytest plugin that runs the async tests (asyncio_mode = auto)",
    "types-psutil": "psutil's type stubs, read by mypy",
}

# Every file that installs torch or names its version, and how it names it.
TORCH_MENTIONS = re.compile(r"torch(?:==|-)(\d+\.\d+\.\d+)|pytorch/pytorch:(\d+\.\d+\.\d+)")
INSTALLERS = (
    "scripts/install.py",
    "deploy/build-images.sh",
    "deploy/build-service-image.sh",
    "deploy/Dockerfile",
    "deploy/run-image/Dockerfile",
)
TORCH_FILES = (*INSTALLERS, "scripts/test", "scripts/up", "README.md", "docs/architecture.md")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def declared() -> dict[str, Requirement]:
    """Each requirement of pyproject.toml, the extras' too, by canonical name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines += extra
    requirements = [Requirement(line) for line in lines]
    return {canonical(r.name): r for r in requirements}


@cache
def locked() -> dict[str, list[str]]:
    """Each pinned package of the lock and the versions it is pinned at (one, we check)."""
    pins: dict[str, list[str]] = {}
    for line in LOCK.read_text().splitlines():
        if not line or line[0] in "# ":
            continue
        name, sep, version = line.partition("==")
        assert sep and version.strip(), f"constraints.txt: not an exact pin: {line!r}"
        pins.setdefault(canonical(name), []).append(version.strip())
    return pins


def imported_modules(folders: tuple[str, ...]) -> Iterator[tuple[str, str, Path]]:
    """(module, its parent or itself, file) for every absolute import in the folders' Python
    files: `from a import b` gives ("a.b", "a"), since b may be a module or a name."""
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        yield alias.name, alias.name, path
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    for alias in node.names:
                        yield f"{node.module}.{alias.name}", node.module, path


@cache
def top_level_owners() -> Mapping[str, list[str]]:
    return metadata.packages_distributions()


@cache
def files_of(distribution: str) -> frozenset[str]:
    return frozenset(str(f) for f in metadata.distribution(distribution).files or ())


def owners(module: str, parent: str) -> set[str]:
    """The installed distributions that provide `module` (else `parent`), canonical names."""
    return providers(module) or providers(parent)


def providers(module: str) -> set[str]:
    """A namespace package (opentelemetry, google) is shared by several distributions: there
    the ones whose files hold the module."""
    top = module.partition(".")[0]
    candidates = top_level_owners().get(top, [])
    if len(candidates) <= 1:
        return {canonical(c) for c in candidates}
    path = module.replace(".", "/")
    return {
        canonical(c)
        for c in candidates
        if any(f.startswith(path + "/") or f.startswith(path + ".") for f in files_of(c))
    }


def third_party(module: str) -> bool:
    top = module.partition(".")[0]
    return top not in sys.stdlib_module_names and top not in (*PACKAGES, "tests", "bench")


def test_every_imported_package_is_declared() -> None:
    undeclared: dict[str, set[str]] = {}
    for module, parent, path in imported_modules(PACKAGES):
        if not third_party(module):
            continue
        found = owners(module, parent)
        if found and not found & declared().keys():
            where = str(path.relative_to(ROOT))
            undeclared.setdefault(" or ".join(sorted(found)), set()).add(where)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_every_imported_module_is_installed() -> None:
    """An import that maps to no installed distribution is a typo or a missing install;
    `from a import b` where b is a name (not a module) is not counted."""
    missing = set()
    for module, _, path in imported_modules(PACKAGES):
        top = module.partition(".")[0]
        if third_party(module) and top not in top_level_owners():
            missing.add(f"{top} ({path.relative_to(ROOT)})")
    assert not missing, f"imported, provided by no installed distribution: {sorted(missing)}"


def test_every_declared_package_is_used() -> None:
    used: set[str] = set()
    for module, parent, _ in imported_modules(USERS):
        if third_party(module):
            used |= owners(module, parent)
    unused = declared().keys() - used - NOT_IMPORTED.keys()
    assert not unused, (
        f"declared in pyproject.toml, imported nowhere and not in NOT_IMPORTED: {sorted(unused)}"
    )
    # and NOT_IMPORTED stays true: each entry declared and still not imported
    assert NOT_IMPORTED.keys() <= declared().keys()
    assert not NOT_IMPORTED.keys() & used, "now imported: drop it from NOT_IMPORTED"


def test_the_lock_pins_each_package_once() -> None:
    several = {name: versions for name, versions in locked().items() if len(versions) > 1}
    assert not several, f"constraints.txt pins these more than once: {several}"


def test_the_lock_holds_every_declared_package_within_its_range() -> None:
    problems = []
    for name, requirement in declared().items():
        versions = locked().get(name)
        if versions is None:
            problems.append(f"{name}: not in constraints.txt (run scripts/lock)")
        elif not requirement.specifier.contains(Version(versions[0]), prereleases=True):
            problems.append(f"{name}=={versions[0]} outside {requirement}")
    assert not problems, problems


def test_torch_is_one_version_everywhere() -> None:
    (torch,) = locked()["torch"]
    assert declared()["torch"].specifier.contains(torch)
    elsewhere = {}
    for name in TORCH_FILES:
        for match in TORCH_MENTIONS.finditer((ROOT / name).read_text()):
            version = match.group(1) or match.group(2)
            if version != torch:
                elsewhere[name] = match.group(0)
    assert not elsewhere, f"torch is {torch} in constraints.txt but: {elsewhere}"


def test_every_installer_installs_through_the_lock() -> None:
    missing = [name for name in INSTALLERS if "constraints.txt" not in (ROOT / name).read_text()]
    assert not missing, f"installs without the lock: {missing}"
