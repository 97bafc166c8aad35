"""recipes.toml's JSON Schema: generated from the models, checked in, and right for editors."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema

from assistant.recipes.check import schema_text
from tests.support.recipe_host import Host, documented_example

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "docs" / "recipes.schema.json"


def _errors(document: dict[str, Any]) -> list[str]:
    schema = json.loads(SCHEMA_FILE.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    return sorted(error.message for error in validator.iter_errors(document))


def test_the_checked_in_schema_is_the_generated_one() -> None:
    # after a change to assistant/recipes/model.py: assistant recipes schema > docs/recipes.schema.json
    assert SCHEMA_FILE.read_text() == schema_text()


def test_the_command_prints_it() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "assistant", "recipes", "schema"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout == SCHEMA_FILE.read_text()


def test_the_documented_example_is_valid(host: Host) -> None:
    document = tomllib.loads(documented_example(host.workdir))
    assert _errors(document) == []
    directive = "#:schema ../docs/recipes.schema.json\n"  # what an editor reads; a comment
    assert host.load(directive + documented_example(host.workdir)).problems == []


def test_an_editor_sees_the_usual_mistakes() -> None:
    document = tomllib.loads(
        """
[recipes.r]
comand = ["python"]
gpus = "2"
key_metric_mode = "lowest"
params.data = { type = "str", default = "a" }
params.n = { type = "list", default = 1 }
"""
    )
    assert _errors(document) == [
        "'2' is not of type 'integer'",
        "'command' is a required property",
        "'lowest' is not one of ['min', 'max']",
        "Additional properties are not allowed ('comand' was unexpected)",
        "{'type': 'list', 'default': 1} is not valid under any of the given schemas",
        "{'type': 'str', 'default': 'a'} is not valid under any of the given schemas",  # no choices
    ]
