"""`assistant recipes check`: what an admin runs after editing recipes.toml.

The same checks the service applies when it loads the file, printed like a compiler's
messages (`path:line: message`), so an editor can jump to each one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from assistant.recipes_file import load_recipes


def check_file(
    path: Path,
    allowed_roots: Sequence[Path],
    secrets_dir: Path,
    *,
    protected: Sequence[Path] = (),
) -> tuple[int, str]:
    """The exit status (0 no problems, 1 problems) and the text to print."""
    result = load_recipes(
        path, allowed_roots=allowed_roots, secrets_dir=secrets_dir, protected=protected
    )
    lines = [
        f"{path}: {p.message}" if p.line is None else f"{path}:{p.line}: {p.message}"
        for p in result.problems
    ]
    names = sorted(result.recipes)
    loaded = f"{_count(len(names), 'recipe')} OK" + (f": {', '.join(names)}" if names else "")
    if result.problems:
        lines.append(f"{_count(len(result.problems), 'problem')}; {loaded}")
    elif result.mtime_ns is None:
        lines.append(f"{path} does not exist: no declared recipes")
    else:
        lines.append(loaded)
    return (1 if result.problems else 0), "\n".join(lines)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
