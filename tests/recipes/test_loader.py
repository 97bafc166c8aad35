"""Loading recipes.toml: what a good file becomes, and every mistake at its line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from assistant.jobs.declared import DeclaredRecipe, ProgressRules, ResumeRule
from assistant.jobs.recipes import Param
from assistant.recipes.lines import KeyLines
from assistant.recipes.loader import LoadResult, Problem, load_recipes
from assistant.recipes.rules import RUN_PARAM_NAMES, parse_time_limit
from assistant.recipes.run_params import HOST_PARAM, RUN_PARAMS
from tests.support.recipe_host import Host, documented_example


def _lines(result: LoadResult) -> list[tuple[int | None, str]]:
    return [(p.line, p.message) for p in result.problems]


def test_the_documented_example_loads_into_every_field(host: Host) -> None:
    result = host.load(documented_example(host.workdir))
    assert result.problems == []
    assert result.mtime_ns == host.recipes_path.stat().st_mtime_ns
    assert result.recipes == {
        "nanogpt": DeclaredRecipe(
            name="nanogpt",
            summary="nanoGPT on Shakespeare characters",
            image="nanogpt:latest",
            workdir=str(host.workdir.resolve()),
            workdir_writable=False,
            command=(
                "torchrun",
                "--standalone",
                "--nproc_per_node={nproc}",
                "train.py",
                "config/train_shakespeare_char.py",
                "--max_iters={steps}",
                "--learning_rate={lr}",
                "--dataset={dataset}",
                "--out_dir={run_dir}/out",
                "--compile={compile}",
            ),
            params=(
                Param("steps", int, 5000, "training iterations", 1, 600000),
                Param("lr", float, 1e-3, "", 1e-6, 1.0),
                Param("compile", bool, False, ""),
                Param(
                    "dataset",
                    str,
                    "shakespeare_char",
                    "",
                    choices=("shakespeare_char", "openwebtext"),
                ),
            ),
            gpus=1,
            memory_mb=32000,
            cpus=8.0,
            time_limit_s=12 * 3600.0,
            env=(("WANDB_MODE", "disabled"),),
            secrets=(("HF_TOKEN", "hf_token"),),
            network=False,
            progress=ProgressRules(
                json_prefix="@assistant ",
                progress=(
                    r"iter (?P<step>\d+): loss (?P<loss>[\d.]+), time (?P<time_ms>[\d.]+)ms",
                ),
                metrics=(
                    r"step (?P<step>\d+): train loss (?P<train_loss>[\d.]+), "
                    r"val loss (?P<val_loss>[\d.]+)",
                ),
                total="steps",
            ),
            resume=ResumeRule(
                checkpoints="out/ckpt*.pt",
                location="run_dir",
                args=("--init_from=resume", "--resume_from={checkpoint}"),
            ),
            key_metric="val_loss",
            key_metric_mode="min",
            line=1,
        )
    }
    steps = result.recipes["nanogpt"].params[0]
    assert type(steps.default) is int
    assert type(result.recipes["nanogpt"].params[1].default) is float


def test_defaults_of_a_minimal_recipe(host: Host) -> None:
    result = host.load('\n\n[recipes.tiny]\ncommand = ["python", "-V"]\n')
    assert result.problems == []
    assert result.recipes["tiny"] == DeclaredRecipe(
        name="tiny",
        summary="",
        image=None,
        workdir=None,
        workdir_writable=False,
        command=("python", "-V"),
        params=(),
        gpus=1,
        memory_mb=None,
        cpus=None,
        time_limit_s=None,
        env=(),
        secrets=(),
        network=False,
        progress=ProgressRules(None, (), (), None),
        resume=None,
        key_metric="loss",
        key_metric_mode="min",
        line=3,
    )


def test_a_missing_file_is_no_problem(tmp_path: Path) -> None:
    result = load_recipes(tmp_path / "recipes.toml", allowed_roots=[], secrets_dir=tmp_path)
    assert result == LoadResult(recipes={}, problems=[], mtime_ns=None)
    assert result.ok


def test_an_empty_file_declares_nothing(host: Host) -> None:
    result = host.load("# nothing yet\n")
    assert result.ok and result.recipes == {}
    assert result.mtime_ns is not None


def test_several_mistakes_each_at_its_line_and_the_good_recipe_loads(
    host: Host, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (host.root / ".ssh" / "keys").mkdir(parents=True)
    project = host.root / "project"
    (project / ".aws").mkdir(parents=True)
    text = f"""\
[recipes.good]
command = ["python", "train.py", "--steps={{steps}}"]
params.steps = {{ type = "int", default = 10, min = 1, max = 100 }}

[recipes.bad]
summary = "several mistakes"
comand = ["x"]
command = ["python", "train.py", "--steps={{stpes}}",
           "--resume={{checkpoint}}", "--data={{data}}"]
workdir = "{outside}"

[recipes.bad.params]
steps = {{ type = "int", default = 0, min = 1, max = 10 }}
data = {{ type = "str", default = "x" }}

[recipes.bad.progress]
progress = ['loss (?P<loss>[\\d.]+)',
            'step (?P<step>\\d+']
metrics = ['x (?P<acc>\\d+)']
totl = "steps"

[recipes.ssh]
command = ["true"]
workdir = "{host.root}/.ssh/keys"

[recipes.aws]
command = ["true"]
workdir = "{project}"
"""
    result = host.load(text)
    assert list(result.recipes) == ["good"]
    root = host.root.resolve()
    assert _lines(result) == [
        (7, "unknown key 'comand' in recipe 'bad' (did you mean 'command'?)"),
        (
            8,
            "command[2] in recipe 'bad' names {stpes}, which is not a declared parameter "
            "or a built-in (did you mean 'steps'?)",
        ),
        (
            9,
            "command[3] in recipe 'bad' names {checkpoint}, which is only known when "
            "resuming: use it in [recipes.bad.resume] args",
        ),
        (10, f"workdir {outside} in recipe 'bad' is outside the allowed roots ({root})"),
        (
            13,
            "default in parameter 'steps' of recipe 'bad' is not allowed: "
            "steps=0 is below the minimum 1",
        ),
        (
            14,
            "str parameter 'data' in recipe 'bad' needs choices: text typed in chat must "
            "never reach a command line unchecked",
        ),
        (
            17,
            "progress[0] in the progress rules of recipe 'bad' has no (?P<step>...) group: "
            "progress needs the step",
        ),
        (
            18,
            "bad regex progress[1] in the progress rules of recipe 'bad': "
            "missing ), unterminated subpattern at position 5",
        ),
        (20, "unknown key 'totl' in the progress rules of recipe 'bad' (did you mean 'total'?)"),
        (
            24,
            f"workdir {host.root}/.ssh/keys in recipe 'ssh' goes through '.ssh', "
            "which may hold credentials",
        ),
        (28, f"workdir {project} in recipe 'aws' holds '.aws'; mounting it would expose it"),
    ]
    assert str(result.problems[0]) == (
        "recipes.toml:7: unknown key 'comand' in recipe 'bad' (did you mean 'command'?)"
    )


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ('[recipes.x]\ncommand = ["a",\nsummary = "b"\n', 3, "TOML syntax error: Invalid value"),
        ("a = 1\n\n[recipes.x]\ngpus = \n", 4, "TOML syntax error: Invalid value at column 8"),
        ('[recipes.x]\nsummary = "abc\n', 2, "TOML syntax error: Illegal character"),
        ('[recipes.x]\n\n\ncommand = ["a"', 4, "at the end of the file"),
        ("[recipes.x]\ngpus = 1\n[recipes.x]\n", 3, "Cannot declare"),
    ],
)
def test_a_syntax_error_is_reported_at_its_line(
    host: Host, text: str, line: int, message: str
) -> None:
    result = host.load(text)
    assert result.recipes == {}
    assert len(result.problems) == 1
    assert result.problems[0].line == line
    assert message in result.problems[0].message
    assert "(at line" not in result.problems[0].message


def test_text_that_is_not_utf8_is_reported_at_its_line(host: Host) -> None:
    host.recipes_path.write_bytes(b'[recipes.x]\ncommand = ["a"]\nsummary = "\xff"\n')
    result = load_recipes(host.recipes_path, allowed_roots=[host.root], secrets_dir=host.secrets)
    assert _lines(result) == [(3, "not UTF-8 text: fix the encoding of this line")]


def test_a_world_writable_file_loads_nothing(host: Host) -> None:
    path = host.write('[recipes.x]\ncommand = ["a"]\n')
    os.chmod(path, 0o666)
    result = load_recipes(path, allowed_roots=[host.root], secrets_dir=host.secrets)
    assert result.recipes == {}
    assert len(result.problems) == 1
    assert "writable by every user (mode 0666)" in result.problems[0].message
    os.chmod(path, 0o644)
    ok = load_recipes(path, allowed_roots=[host.root], secrets_dir=host.secrets)
    assert list(ok.recipes) == ["x"]


_GOOD = '[recipes.r]\ncommand = ["python", "t.py", "--n={n}"]\nparams.n = { type = "int", default = 1 }\n'


@pytest.mark.parametrize(
    ("extra", "line", "message"),
    [
        ("[settings]\nx = 1\n", 4, "unknown key 'settings' at the top level"),
        ("gpus = 65\n", 4, "gpus in recipe 'r' must be an integer from 0 to 64, got an integer 65"),
        ('gpus = "2"\n', 4, "gpus in recipe 'r' must be an integer from 0 to 64, got a string '2'"),
        ("memory_mb = 32\n", 4, "memory_mb in recipe 'r' must be an integer of at least 64"),
        ("cpus = 0\n", 4, "cpus in recipe 'r' must be a number above 0"),
        ('time_limit = "12x"\n', 4, "time_limit in recipe 'r': '12x' is not a duration"),
        ("time_limit = -5\n", 4, "time_limit in recipe 'r': must be a positive number"),
        ('network = "no"\n', 4, "network in recipe 'r' must be true or false"),
        ('image = "my image"\n', 4, "image in recipe 'r' must be an image name"),
        ('key_metric_mode = "lowest"\n', 4, "key_metric_mode in recipe 'r' must be \"min\" or"),
        ('workdir = "relative/dir"\n', 4, "workdir relative/dir in recipe 'r' must be an absolute"),
        ("workdir_writable = true\n", 4, "workdir_writable is set in recipe 'r', but no workdir"),
        ('env = { lower = "x" }\n', 4, "env name 'lower' in recipe 'r' must be uppercase"),
        ("env = { A = 1 }\n", 4, "env A in recipe 'r' must be a string, got an integer 1"),
        ('secrets = { HF = "nope" }\n', 4, "secret 'nope' not found in "),
        ("secrets = { HF = 3 }\n", 4, "secret for HF in recipe 'r' must be a secret's file name"),
        (
            '[recipes.r.resume]\ncheckpoints = "*.pt"\nargs = "x"\n',
            6,
            "resume args in recipe 'r' must be an array of strings (one per argument)",
        ),
        ("[recipes.r.progress]\nprogress = [3]\n", 5, "progress[0] in the progress rules of"),
        ('secrets = { HF = "../hf_token" }\n', 4, "secret name '../hf_token' in recipe 'r' must"),
        (
            'env = { HF_TOKEN = "x" }\nsecrets = { HF_TOKEN = "hf_token" }\n',
            5,
            "HF_TOKEN in recipe 'r' is set both in env and in secrets",
        ),
        (
            '[recipes.s]\ncommand = "python t.py"\n',
            5,
            "command in recipe 's' must be an array of strings",
        ),
        (
            'params.gpus = { type = "int", default = 1 }\n',
            4,
            "clashes with the run parameter gpus=",
        ),
        (
            'params.run_dir = { type = "str", default = "a", choices = ["a"] }\n',
            4,
            "clashes with the built-in {run_dir}",
        ),
        ('params.Lr = { type = "float", default = 1.0 }\n', 4, "parameter name 'Lr' in recipe"),
        (
            'params.m = { type = "int", default = 1 }\n',
            4,
            "parameter 'm' in recipe 'r' is used by no command or resume argument",
        ),
        ('params.m = { type = "list", default = 1 }\n', 4, "has type 'list'; use int, float, str"),
        ('params.m = { type = "float" }\n', 4, "parameter 'm' in recipe 'r' needs a default"),
        (
            'params.m = { type = "int", default = 1.5 }\n',
            4,
            "default in parameter 'm' of recipe 'r' must be an int",
        ),
        (
            'params.m = { type = "bool", default = false, min = 0 }\n',
            4,
            "only int and float parameters have bounds",
        ),
        (
            'params.m = { type = "float", default = 1, min = 2, max = 1 }\n',
            4,
            "min 2 is above max 1",
        ),
        (
            'params.m = { type = "int", default = 1, choices = ["1"] }\n',
            4,
            "only str parameters take choices",
        ),
        (
            'params.m = { type = "int", default = 1, defualt = 2 }\n',
            4,
            "unknown key 'defualt' in parameter 'm' of recipe 'r' (did you mean 'default'?)",
        ),
        (
            'params.m = { type = "str", default = "b", choices = ["a"] }\n',
            4,
            "m='b' is not one of a",
        ),
        (
            '[recipes.r.progress]\nprogress = ["(?P<step>\\\\d+) (?P<total>\\\\d+)"]\n',
            5,
            "group 'total' in progress[0]",
        ),
        (
            '[recipes.r.progress]\nmetrics = ["step (?P<step>\\\\d+)"]\n',
            5,
            "metrics[0] in the progress rules of recipe 'r' names no metric",
        ),
        (
            '[recipes.r.progress]\ntotal = "m"\n',
            5,
            "total 'm' in the progress rules of recipe 'r' is not a declared parameter",
        ),
        (
            "[recipes.r.progress]\ntotal = 0\n",
            5,
            "total in the progress rules of recipe 'r' must be an int parameter's name",
        ),
        (
            '[recipes.r.progress]\njson_prefix = " "\n',
            5,
            "json_prefix in the progress rules of recipe 'r' must be a non-empty string",
        ),
        (
            'key_metric = "acc"\n[recipes.r.progress]\nprogress = ["(?P<step>\\\\d+)"]\n',
            4,
            "key_metric 'acc' in recipe 'r' is never reported",
        ),
        (
            '[recipes.r.resume]\nlocation = "run_dir"\n',
            4,
            "checkpoints is missing in the resume rule",
        ),
        (
            '[recipes.r.resume]\ncheckpoints = "../x/*.pt"\n',
            5,
            "must be relative to its location, without '..'",
        ),
        (
            '[recipes.r.resume]\ncheckpoints = "*.pt"\nlocation = "home"\n',
            6,
            "location in the resume rule of recipe 'r' must be",
        ),
        (
            '[recipes.r.resume]\ncheckpoints = "*.pt"\nargs = ["--from={ckpt}"]\n',
            6,
            "resume args[0] in recipe 'r' names {ckpt}",
        ),
        (
            '[recipes.r.resume]\ncheckpoints = "*.pt"\nargs = ["{checkpoint!r}"]\n',
            6,
            "bad template resume args[0] in recipe 'r': placeholder",
        ),
        (
            '[recipes.r.resume]\ncheckpoints = "*.pt"\nlocation = "workdir"\n',
            6,
            "location 'workdir' in the resume rule of recipe 'r' needs a workdir",
        ),
    ],
)
def test_one_mistake_gives_one_problem_at_its_line(
    host: Host, extra: str, line: int, message: str
) -> None:
    result = host.load(_GOOD + extra)
    assert len(result.problems) == 1, result.problems
    assert result.problems[0].line == line
    assert message in result.problems[0].message
    # a problem with recipe r keeps it out; one elsewhere does not
    assert ("r" in result.recipes) == ("recipe 'r'" not in result.problems[0].message)


def test_the_base_of_the_one_mistake_cases_is_valid(host: Host) -> None:
    result = host.load(_GOOD)
    assert result.problems == []
    assert list(result.recipes) == ["r"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("GPT2", "recipe name 'GPT2' must be 1 to 40 lowercase letters"),
        ("2fast", "recipe name '2fast' must be"),
        ("a" * 41, "must be 1 to 40"),
        ("gpt", "recipe name 'gpt' is taken by a built-in (gpt, classifier, serve)"),
        ("classifier", "taken by a built-in"),
        ("serve", "taken by a built-in"),
    ],
)
def test_recipe_names(host: Host, name: str, message: str) -> None:
    result = host.load(f'\n[recipes.{name}]\ncommand = ["a"]\n')
    assert result.recipes == {}
    assert [(p.line, message in p.message) for p in result.problems] == [(2, True)]


def test_a_recipe_that_is_not_a_table(host: Host) -> None:
    result = host.load('[recipes]\nr = 3\n[recipes.q]\ncommand = ["a"]\n')
    assert list(result.recipes) == ["q"]
    assert _lines(result) == [(2, "recipe 'r' must be a table, got an integer 3")]


def test_quoted_names_and_dashes(host: Host) -> None:
    result = host.load(
        '[recipes."fine-tune_2"]\ncommand = ["a"]\n[recipes."a b"]\ncommand = ["a"]\n'
    )
    assert list(result.recipes) == ["fine-tune_2"]
    assert _lines(result) == [
        (
            3,
            "recipe name 'a b' must be 1 to 40 lowercase letters, digits, _ or -, "
            "starting with a letter",
        )
    ]


def test_choices_must_be_plain_tokens(host: Host) -> None:
    text = (
        '[recipes.r]\ncommand = ["a", "--d={d}"]\n[recipes.r.params.d]\ntype = "str"\n'
        'default = "ok"\nchoices = ["ok", "-rf",\n  "a b", "x;y", "$(id)", "ok", 3]\n'
    )
    result = host.load(text)
    bad = [(p.line, p.message.split(" in parameter")[0]) for p in result.problems]
    assert bad == [
        (6, "choice '-rf'"),
        (7, "choice 'a b'"),
        (7, "choice 'x;y'"),
        (7, "choice '$(id)'"),
        (7, "choice 'ok'"),
        (7, "choice 6"),
    ]
    assert "no leading -" in result.problems[0].message
    assert "is listed twice" in result.problems[4].message


def test_total_must_name_an_int_parameter(host: Host) -> None:
    text = (
        '[recipes.r]\ncommand = ["a", "{lr}"]\nparams.lr = { type = "float", default = 0.1 }\n'
        '[recipes.r.progress]\ntotal = "lr"\n'
    )
    assert _lines(host.load(text)) == [
        (
            5,
            "total 'lr' in the progress rules of recipe 'r' must name an int parameter, not a float",
        )
    ]


def test_a_fixed_total_and_a_writable_workdir_for_checkpoints(host: Host) -> None:
    text = f"""\
[recipes.r]
command = ["a"]
workdir = "{host.workdir}"
workdir_writable = true
[recipes.r.progress]
total = 1000
[recipes.r.resume]
checkpoints = "ckpt/*.pt"
location = "workdir"
args = ["--resume={{checkpoint}}", "--in={{workdir}}"]
"""
    result = host.load(text)
    assert result.problems == []
    recipe = result.recipes["r"]
    assert recipe.progress.total == 1000
    assert recipe.resume == ResumeRule(
        "ckpt/*.pt", "workdir", ("--resume={checkpoint}", "--in={workdir}")
    )


def test_resume_in_the_workdir_needs_it_writable(host: Host) -> None:
    text = f"""\
[recipes.r]
command = ["a"]
workdir = "{host.workdir}"
[recipes.r.resume]
checkpoints = "ckpt/*.pt"
location = "workdir"
"""
    assert _lines(host.load(text)) == [
        (
            6,
            "location 'workdir' in the resume rule of recipe 'r' needs workdir_writable = true: "
            "the command writes its checkpoints there",
        )
    ]


def test_the_key_metric_may_come_from_a_metrics_regex(host: Host) -> None:
    text = """\
[recipes.r]
command = ["a"]
key_metric = "val_loss"
[recipes.r.progress]
progress = ['iter (?P<step>\\d+): loss (?P<loss>[\\d.]+)']
metrics = ['val loss (?P<val_loss>[\\d.]+)']
"""
    result = host.load(text)
    assert result.problems == []
    assert result.recipes["r"].key_metric == "val_loss"


def test_workdir_placeholder_needs_a_workdir(host: Host) -> None:
    result = host.load('[recipes.r]\ncommand = ["a", "{workdir}/x"]\n')
    assert _lines(result) == [
        (2, "command[1] in recipe 'r' names {workdir}, but no workdir is declared")
    ]


def test_unknown_keys_everywhere_with_suggestions(host: Host) -> None:
    text = """\
[recipes.r]
command = ["a", "{n}"]
sumary = "x"
[recipes.r.params.n]
type = "int"
default = 1
hlp = "x"
[recipes.r.progress]
metric = []
[recipes.r.resume]
checkpoints = "*.pt"
argz = []
"""
    assert _lines(host.load(text)) == [
        (3, "unknown key 'sumary' in recipe 'r' (did you mean 'summary'?)"),
        (7, "unknown key 'hlp' in parameter 'n' of recipe 'r' (did you mean 'help'?)"),
        (9, "unknown key 'metric' in the progress rules of recipe 'r' (did you mean 'metrics'?)"),
        (12, "unknown key 'argz' in the resume rule of recipe 'r' (did you mean 'args'?)"),
    ]


def test_problem_text() -> None:
    assert str(Problem(12, "bad")) == "recipes.toml:12: bad"
    assert str(Problem(None, "bad", "r.toml")) == "r.toml: bad"


def test_run_param_names_match_the_run_specs() -> None:
    assert set(RUN_PARAM_NAMES) == {*RUN_PARAMS, HOST_PARAM.name}


def test_key_lines_follow_headers_dotted_keys_inline_tables_and_arrays() -> None:
    text = """\
# [recipes.fake] in a comment
[recipes."q.r"]   # comment [x]
summary = \"\"\"
gpus = 3
\"\"\"
'command' = ['a', "b = c", \"\"\"x\"\"\"]
params.steps = { type = "int", "default" = 1, nested = { a = [1, 2] } }
env = [
  # a comment inside an array
  "one",
  { k = "v" },
]
[ recipes . 'q.r' . progress ]
total = 1979-05-27 07:32:00
key = "\\"quoted\\" = x"
"""
    lines = KeyLines.scan(text)
    path = ("recipes", "q.r")
    assert lines.line(path) == 2
    assert lines.line((*path, "summary")) == 3
    assert lines.line((*path, "gpus")) == 2  # inside a string: falls back to the table
    assert lines.line((*path, "command")) == 6
    assert lines.line((*path, "command", 2)) == 6
    assert lines.line((*path, "params", "steps", "default")) == 7
    assert lines.line((*path, "params", "steps", "nested", "a", 1)) == 7
    assert lines.line((*path, "env", 0)) == 10
    assert lines.line((*path, "env", 1, "k")) == 11
    assert lines.line((*path, "progress")) == 13
    assert lines.line((*path, "progress", "total")) == 14
    assert lines.line((*path, "progress", "key")) == 15
    assert lines.line((*path, "progress", "missing")) == 13
    assert lines.line(("recipes", "fake")) == 2  # only in a comment: the enclosing table
    assert lines.line(("elsewhere",)) is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("90m", 5400.0),
        ("12h", 43200.0),
        ("2d", 172800.0),
        ("1h30m", 5400.0),
        ("45s", 45.0),
        (3600, 3600.0),
        (1.5, 1.5),
    ],
)
def test_parse_time_limit(value: object, seconds: float) -> None:
    assert parse_time_limit(value) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("12x", "not a duration"),
        ("", "not a duration"),
        ("h", "not a duration"),
        (0, "positive"),
        (-1, "positive"),
        (float("inf"), "positive"),
        (float("nan"), "positive"),
        (True, "got a boolean"),
        ([1], "got an array"),
        (10**12, "too long"),
        ("3651d", "too long"),
    ],
)
def test_parse_time_limit_refuses(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_time_limit(value)
