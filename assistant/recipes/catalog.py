"""Every recipe a run can name: the built-in ones and the admin's declared ones.

The declared ones come from ASSISTANT_HOME/recipes.toml and are re-read when the file
changes (a stat per lookup, so an edit counts from the next command). An edit with
mistakes keeps the last good version active, and `/status` says so until it is fixed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from assistant.errors import CommandError
from assistant.jobs.declared import DeclaredRecipe
from assistant.jobs.recipes import RECIPES, RecipeInfo
from assistant.recipes.loader import Problem, load_recipes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    """A recipe as the host sees it; `declared` is None for a built-in one."""

    info: RecipeInfo
    declared: DeclaredRecipe | None = None


class RecipeCatalog:
    def __init__(
        self,
        path: Path,
        *,
        allowed_roots: Sequence[Path],
        secrets_dir: Path,
        protected: Sequence[Path] = (),
    ) -> None:
        self.path = path
        self._roots = tuple(allowed_roots)
        self._protected = tuple(protected)
        self._secrets_dir = secrets_dir
        self._declared: dict[str, DeclaredRecipe] = {}
        self._seen: tuple[int, int] | None = None  # (mtime_ns, size) last read
        self.problems: list[Problem] = []
        self._loaded_once = False

    def refresh(self) -> None:
        """Re-read the file if it changed since the last look."""
        try:
            st = self.path.stat()
            seen: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except OSError:
            seen = None
        if self._loaded_once and seen == self._seen:
            return
        self._seen = seen
        result = load_recipes(
            self.path,
            allowed_roots=self._roots,
            secrets_dir=self._secrets_dir,
            protected=self._protected,
        )
        if result.problems and self._loaded_once:
            # keep what worked: a half-finished edit must not take recipes away mid-use
            self.problems = list(result.problems)
            log.warning(
                "%s has %d problem(s); the last good version stays active: %s",
                self.path,
                len(result.problems),
                result.problems[0],
            )
            return
        self._loaded_once = True
        self.problems = list(result.problems)
        self._declared = dict(result.recipes)
        if result.problems:
            log.warning("%s: %s", self.path, "; ".join(str(p) for p in result.problems))

    @property
    def note(self) -> str | None:
        """One line for /status while the file has problems."""
        if not self.problems:
            return None
        first = self.problems[0]
        return (
            f"{self.path.name} has {len(self.problems)} problem(s), first: {first};"
            " the last good version is active (assistant recipes check)"
        )

    def get(self, name: str) -> Entry | None:
        self.refresh()
        key = name.lower()
        if key in RECIPES:
            return Entry(RECIPES[key])
        declared = self._declared.get(key)
        return None if declared is None else Entry(recipe_info(declared), declared)

    def require(self, name: str) -> Entry:
        """:raises CommandError: no such recipe; the message lists the known ones."""
        entry = self.get(name)
        if entry is None:
            names = ", ".join(sorted(self.names()))
            mine = [p for p in self.problems if f"recipe {name.lower()!r}" in p.message]
            if mine:
                raise CommandError(
                    f"recipe {name!r} is declared in {self.path.name} but refused:"
                    f" line {mine[0].line}: {mine[0].message}"
                    f" ({len(mine)} problem(s); assistant recipes check lists them)"
                )
            raise CommandError(f"unknown recipe {name!r}; recipes: {names}")
        return entry

    def entries(self) -> list[Entry]:
        self.refresh()
        built_in = [Entry(info) for info in RECIPES.values()]
        declared = [Entry(recipe_info(d), d) for _, d in sorted(self._declared.items())]
        return built_in + declared

    def names(self) -> list[str]:
        return [e.info.name for e in self.entries()]


def recipe_info(recipe: DeclaredRecipe) -> RecipeInfo:
    """The registry's view of a declared recipe, so `validate_params` checks chat input.

    `module` is empty (a declared recipe runs its own command); `total_param` is empty
    when the total is fixed or unknown.
    """
    total = recipe.progress.total
    return RecipeInfo(
        name=recipe.name,
        summary=recipe.summary,
        module="",
        params=recipe.params,
        total_param=total if isinstance(total, str) else "",
        key_metric=recipe.key_metric,
        key_metric_mode=recipe.key_metric_mode,
        supports_resume=recipe.resume is not None,
    )
