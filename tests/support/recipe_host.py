"""A host layout for recipe-file tests: an allowed root with a workdir, a secrets dir."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import assistant.recipes.model
from assistant.recipes.loader import LoadResult, load_recipes


@dataclass(frozen=True)
class Host:
    root: Path  # the one allowed root
    workdir: Path  # a plain directory inside it
    home: Path  # ASSISTANT_HOME: protected, holds secrets/ and recipes.toml
    secrets: Path

    @property
    def recipes_path(self) -> Path:
        return self.home / "recipes.toml"

    def write(self, text: str) -> Path:
        self.recipes_path.write_text(text)
        return self.recipes_path

    def load(self, text: str) -> LoadResult:
        return load_recipes(
            self.write(text),
            allowed_roots=[self.root],
            secrets_dir=self.secrets,
            protected=[self.home],
        )


def make_host(base: Path) -> Host:
    root = base / "ml"
    workdir = root / "code"
    workdir.mkdir(parents=True)
    home = base / "home"
    secrets = home / "secrets"
    secrets.mkdir(parents=True)
    (secrets / "hf_token").write_text("hf_secret_value\n")
    return Host(root=root, workdir=workdir, home=home, secrets=secrets)


def documented_example(workdir: Path) -> str:
    """The full example in assistant/recipes/model.py's docstring, pointed at `workdir`."""
    doc = assistant.recipes.model.__doc__ or ""
    match = re.search(r"```toml\n(.*?)```", doc, re.DOTALL)
    assert match is not None
    return match.group(1).replace("/srv/ml/nanoGPT", str(workdir))
