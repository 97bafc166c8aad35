"""`assistant recipes check` and `assistant recipes schema`: an admin's tools for recipes.toml.

`check` applies the same checks the service applies when it loads the file, printed like a
compiler's messages (`path:line: message`), so an editor can jump to each one. `schema`
prints the file's JSON Schema, which an editor uses to check the file as it is typed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from assistant.recipes.loader import load_recipes
from assistant.recipes.model import json_schema


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


def schema_text() -> str:
    """The JSON Schema as docs/recipes.schema.json holds it."""
    return json.dumps(json_schema(), indent=2) + "\n"
