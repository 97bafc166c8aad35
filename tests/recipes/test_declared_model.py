"""The declaration model: templates, rendering, and the spec.json round trip."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from assistant.jobs.declared import (
    BUILTIN_FIELDS,
    DeclaredRecipe,
    ProgressRules,
    from_json,
    render,
    render_args,
    template_fields,
    to_json,
)
from assistant.jobs.recipes import Param, ParamError, validate_params
from assistant.recipes.catalog import recipe_info
from tests.support.recipe_host import Host, documented_example


@pytest.mark.parametrize(
    ("template", "fields"),
    [
        ("train.py", []),
        ("--lr={lr}", ["lr"]),
        ("{run_dir}/out/{steps}-{run_dir}", ["run_dir", "steps"]),
        ('--json={{"a": 1}}', []),
        ("{{steps}}={steps}", ["steps"]),
        ("{_x1}", ["_x1"]),
    ],
)
def test_template_fields_lists_each_name_once_in_order(template: str, fields: list[str]) -> None:
    assert template_fields(template) == fields


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("{a.b}", "not a plain name"),
        ("{a[0]}", "not a plain name"),
        ("{a!r}", "conversion"),
        ("{a:>3}", "format spec"),
        ("{a:{b}}", "format spec"),
        ("{}", "empty placeholder"),
        ("{0}", "not a plain name"),
        ("{a b}", "not a plain name"),
        ("{é}", "not a plain name"),
        ("--x={a", "unbalanced braces"),
        ("--x=a}", "unbalanced braces"),
    ],
)
def test_template_fields_refuses_anything_but_bare_names(template: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        template_fields(template)


def test_render_keeps_one_argument_one_argument() -> None:
    values = {"data": "a b; rm -rf /", "steps": "10"}
    assert render("--data={data}", values) == "--data=a b; rm -rf /"
    assert render_args(["python", "--data={data}", "{steps}"], values) == [
        "python",
        "--data=a b; rm -rf /",
        "10",
    ]


def test_render_unescapes_braces_and_never_expands_values_twice() -> None:
    assert render("{{steps}}={steps}", {"steps": "5"}) == "{steps}=5"
    assert render("--cfg={{}}", {}) == "--cfg={}"
    assert render("{a}", {"a": "{b}", "b": "no"}) == "{b}"


def test_render_refuses_a_missing_value_and_a_bad_template() -> None:
    with pytest.raises(KeyError):
        render("--steps={steps}", {})
    with pytest.raises(ValueError, match="conversion"):
        render("{steps!s}", {"steps": "1"})


def test_builtin_fields() -> None:
    assert BUILTIN_FIELDS == ("gpus", "nproc", "run_dir", "workdir", "checkpoint")


def _loaded(host: Host) -> DeclaredRecipe:
    result = host.load(documented_example(host.workdir))
    assert result.problems == []
    return result.recipes["nanogpt"]


def test_json_round_trip_gives_an_equal_recipe(host: Host) -> None:
    recipe = _loaded(host)
    data = json.loads(json.dumps(to_json(recipe)))
    assert from_json(data) == recipe
    assert data["params"][0] == {
        "name": "steps",
        "type": "int",
        "default": 5000,
        "help": "training iterations",
        "min": 1.0,
        "max": 600000.0,
        "choices": None,
    }
    assert data["secrets"] == [["HF_TOKEN", "hf_token"]]
    assert "hf_secret_value" not in json.dumps(data)


def test_json_round_trip_of_optional_fields_left_out() -> None:
    recipe = DeclaredRecipe(
        name="tiny",
        summary="",
        image=None,
        workdir=None,
        workdir_writable=False,
        command=("python", "-c", "print({n})"),
        params=(Param("n", int, 3, "", None, None, None),),
        gpus=0,
        memory_mb=None,
        cpus=None,
        time_limit_s=None,
        env=(),
        secrets=(),
        network=True,
        progress=ProgressRules(None, (), (), 100),
        resume=None,
        key_metric="accuracy",
        key_metric_mode="max",
        line=7,
    )
    assert from_json(json.loads(json.dumps(to_json(recipe)))) == recipe


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("command"), "KeyError"),
        (lambda d: d.update(gpus="2"), "gpus must be an integer"),
        (lambda d: d.update(network=1), "network must be true or false"),
        (lambda d: d.update(key_metric_mode="lowest"), "key_metric_mode"),
        (lambda d: d.update(env=[["A"]]), "pairs"),
        (lambda d: d["resume"].update(location="/tmp"), "resume location"),
        (lambda d: d["params"][0].update(type="list"), "parameter type"),
        (lambda d: d["params"][0].update(default=0), "below the minimum"),
        (lambda d: d["progress"].update(total=True), "progress total"),
    ],
)
def test_from_json_refuses_a_malformed_recipe(host: Host, change: object, message: str) -> None:
    data = json.loads(json.dumps(to_json(_loaded(host))))
    assert callable(change)
    change(data)
    with pytest.raises(ValueError, match=message):
        from_json(data)


def test_recipe_info_lets_the_registry_validate_chat_input(host: Host) -> None:
    recipe = _loaded(host)
    info = recipe_info(recipe)
    assert info.total_param == "steps"
    assert info.supports_resume
    assert validate_params(info, {"steps": "20", "compile": "yes"}) == {
        "steps": 20,
        "compile": True,
    }
    with pytest.raises(ParamError, match="not one of"):
        validate_params(info, {"dataset": "$(id)"})
    with pytest.raises(ParamError, match="did you mean 'steps'"):
        validate_params(info, {"stesp": "1"})
    fixed = replace(recipe, progress=replace(recipe.progress, total=500), resume=None)
    assert recipe_info(fixed).total_param == ""
    assert not recipe_info(fixed).supports_resume


def test_workdir_is_stored_resolved(host: Host, tmp_path: Path) -> None:
    link = tmp_path / "ml" / "link"
    link.symlink_to(host.workdir)
    text = documented_example(link)
    recipe = host.load(text).recipes["nanogpt"]
    assert recipe.workdir == str(host.workdir.resolve())
