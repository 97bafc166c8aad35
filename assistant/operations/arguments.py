"""Operation arguments: pydantic models, validated once, whoever calls.

A chat command parses its words into one of these, the model's tool passes its JSON
fields straight in; either way `read` validates them and a problem becomes one
`CommandError` line in plain words (a command adds its usage, a tool hands it back to
the model). The field types here carry the checks every id, count and name gets, and
the JSON Schema the model is shown is generated from the same models.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Self, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, WithJsonSchema

from assistant.errors import CommandError

ID_PATTERN = r"^[0-9a-z]{1,13}$"
KEY_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"  # as a declared recipe names its parameters
MAX_TEXT = 2000
MAX_VALUE = 200  # characters of one parameter's value
_ID = re.compile(ID_PATTERN)
_KEY = re.compile(KEY_PATTERN)


class Arguments(BaseModel):
    """Base of every operation's arguments: immutable, and no field it does not know."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def read(cls, raw: object, who: str = "") -> Self:
        """`raw` (a dict of fields) validated into the model.

        :raises CommandError: one line naming the first problem (`who` names the caller,
            e.g. the tool, where a field is missing or unknown).
        """
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise CommandError(describe(exc, cls, who or cls.__name__)) from None


A = TypeVar("A", bound=Arguments)


def describe(exc: ValidationError, model: type[Arguments], who: str) -> str:
    """The first problem of a validation, as a person would say it."""
    error = exc.errors(include_url=False)[0]
    kind, where = error["type"], ".".join(str(part) for part in error["loc"])
    if kind == "missing":
        return f"{who} needs {where}"
    if kind == "extra_forbidden":
        extra = sorted(str(e["loc"][0]) for e in exc.errors() if e["type"] == kind)
        names = ", ".join(model.model_fields) or "no arguments"
        return f"{who} does not take {', '.join(extra)} (it takes {names})"
    if kind in ("model_type", "model_attributes_type", "dict_type") and not error["loc"]:
        return f"{who} takes a JSON object, got {type(error['input']).__name__}"
    message = str(error["msg"]).removeprefix("Value error, ")
    return message if kind == "value_error" else f"{where}: {message}"


# ---- field checks: each raises ValueError with the sentence the caller is shown ----------


def _id(value: object) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise ValueError(
            f"{value!r} is not an id: 1 to 13 lower-case letters and digits"
            " (as /runs, /task list or /debug show them)"
        )
    return value


def whole(low: int, high: int, name: str) -> BeforeValidator:
    """A whole number from `low` to `high` (an integral float counts; a bool does not)."""

    def check(value: object) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
        return value

    return BeforeValidator(check)


def text(name: str, limit: int = MAX_TEXT) -> BeforeValidator:
    """Non-empty text of at most `limit` characters, stripped."""

    def check(value: object) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name} must be non-empty text")
        if len(value) > limit:
            raise ValueError(f"{name} is longer than {limit} characters")
        return value.strip()

    return BeforeValidator(check)


def flag(name: str) -> BeforeValidator:
    def check(value: object) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value

    return BeforeValidator(check)


def scalar_text(key: str, value: object) -> str:
    """A parameter's value as the text a recipe's registry parses: a number, true/false,
    or short text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    if isinstance(value, str) and value and len(value) <= MAX_VALUE:
        return value
    raise ValueError(f"{key}: a value is a number, true/false, or short text; got {value!r}")


def _params(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError("params must be an object of parameter names to values")
    checked: dict[str, str] = {}
    for key, raw in value.items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise ValueError(
                f"{key!r} is not a parameter name (a lower-case letter, then letters, digits, _)"
            )
        checked[key] = scalar_text(key, raw)
    return checked


Id = Annotated[
    str,
    BeforeValidator(_id),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": ID_PATTERN,
            "description": "an id as listed (a unique prefix is enough)",
        }
    ),
]
# recipe parameters by name, each value the text its recipe's registry parses and checks
Params = Annotated[
    dict[str, str],
    BeforeValidator(_params),
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"pattern": KEY_PATTERN},
            "additionalProperties": {"type": ["string", "number", "boolean"]},
        }
    ),
]


def json_schema(model: type[Arguments]) -> dict[str, Any]:
    """The model's JSON Schema as the Messages API takes a tool's input: titles left out."""
    schema = model.model_json_schema()

    def strip(node: object) -> None:
        if isinstance(node, dict):
            node.pop("title", None)
            for key, child in node.items():
                if key != "properties":
                    strip(child)
                else:
                    for prop in child.values():
                        strip(prop)
        elif isinstance(node, list):
            for child in node:
                strip(child)

    strip(schema)
    return schema
