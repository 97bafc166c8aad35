"""The workdir policy: which host folder a declared recipe may mount into its run.

A workdir must be an absolute directory inside one of the allowed roots (symlinks
resolved), must not overlap the assistant's own home or secrets, and must not be under or
hold credentials (`.ssh`, `.aws`, `.gnupg`, `.kube`, `.docker`, `.config/gcloud`, `.env`,
`.netrc`, private keys like `id_rsa` or `*.pem` / `*.key`) anywhere in its tree; the walk
is bounded, and a tree larger than the walk covers is refused. Checked when recipes.toml
is loaded and again at launch (the folder may have changed since).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from pathlib import Path

# Path components that hold credentials: a workdir under one is never mounted.
BLOCKED_NAMES = (".ssh", ".aws", ".gnupg", ".kube", ".docker", ".env", ".netrc")
BLOCKED_SEQUENCES = ((".config", "gcloud"),)
KEY_FILE_PATTERNS = ("id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", "*.pem", "*.key")
# How far the credential check walks a workdir: past either, the folder is refused.
MAX_WALK_DEPTH = 12
MAX_WALK_ENTRIES = 50_000


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


def resolve(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


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
    roots = [resolve(r) for r in allowed_roots]
    if not roots:
        problems.append("is not allowed: no recipe roots are configured (ASSISTANT_RECIPE_ROOTS)")
    elif not any(resolved.is_relative_to(root) for root in roots):
        shown = ", ".join(str(r) for r in roots)
        via = "is" if resolved == path else f"resolves to {resolved}, which is"
        problems.append(f"{via} outside the allowed roots ({shown})")
    for guarded in (resolve(p) for p in protected):
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
    for home in sorted({resolve(h) for h in homes}):
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
