"""Working directories: inside an allowed root, never holding or under credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from assistant.recipes.workdir import blocked_component, check_workdir
from tests.support.recipe_host import Host


def _recipe(workdir: Path | str) -> str:
    return f'[recipes.r]\ncommand = ["true"]\nworkdir = "{workdir}"\n'


def _problems(host: Host, workdir: Path | str) -> list[str]:
    result = host.load(_recipe(workdir))
    assert all(p.line == 3 for p in result.problems)
    assert ("r" in result.recipes) == (not result.problems)
    return [p.message for p in result.problems]


def test_a_plain_directory_inside_the_root_is_fine(host: Host) -> None:
    assert _problems(host, host.workdir) == []
    assert _problems(host, host.root) == []


def test_a_symlink_inside_the_root_pointing_outside_is_refused(host: Host, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    link = host.root / "escape"
    link.symlink_to(outside)
    root = host.root.resolve()
    assert _problems(host, link) == [
        f"workdir {link} in recipe 'r' resolves to {outside.resolve()}, which is outside "
        f"the allowed roots ({root})"
    ]


def test_dotdot_out_of_the_root_is_refused(host: Host) -> None:
    sneaky = f"{host.root}/../home"
    messages = _problems(host, sneaky)
    assert any("outside the allowed roots" in m for m in messages)


def test_a_symlink_from_elsewhere_into_the_root_is_what_counts(host: Host, tmp_path: Path) -> None:
    link = tmp_path / "shortcut"
    link.symlink_to(host.workdir)
    assert _problems(host, link) == []
    assert host.load(_recipe(link)).recipes["r"].workdir == str(host.workdir.resolve())


def test_a_symlink_into_a_credentials_directory_is_refused(host: Host) -> None:
    keys = host.root / ".ssh"
    keys.mkdir()
    link = host.root / "innocent"
    link.symlink_to(keys)
    assert _problems(host, link) == [
        f"workdir {link} in recipe 'r' goes through '.ssh', which may hold credentials"
    ]


@pytest.mark.parametrize(
    ("relative", "blocked"),
    [
        (".ssh", ".ssh"),
        ("u/.aws/conf", ".aws"),
        (".gnupg", ".gnupg"),
        (".kube/x", ".kube"),
        (".docker", ".docker"),
        (".config/gcloud/legacy", ".config/gcloud"),
        (".env", ".env"),
        (".netrc", ".netrc"),
        ("keys/id_rsa", "id_rsa"),
        ("keys/id_ed25519", "id_ed25519"),
        ("certs/server.pem", "server.pem"),
        ("tls.key", "tls.key"),
    ],
)
def test_directories_under_credentials_are_refused(host: Host, relative: str, blocked: str) -> None:
    path = host.root / relative
    path.mkdir(parents=True)
    assert _problems(host, path) == [
        f"workdir {path} in recipe 'r' goes through {blocked!r}, which may hold credentials"
    ]


@pytest.mark.parametrize(
    "path",
    ["/srv/ml/code", "/srv/.config/other", "/srv/config/gcloud", "/srv/ssh", "/srv/keys.d"],
)
def test_blocked_component_leaves_ordinary_paths_alone(path: str) -> None:
    assert blocked_component(Path(path)) is None


@pytest.mark.parametrize("entry", [".ssh", ".aws", ".gnupg", ".env", ".netrc", "id_rsa", "a.pem"])
def test_a_workdir_holding_credentials_is_refused(host: Host, entry: str) -> None:
    project = host.root / "project"
    project.mkdir()
    if entry.startswith(".") and entry not in (".env", ".netrc"):
        (project / entry).mkdir()
    else:
        (project / entry).write_text("secret")
    assert _problems(host, project) == [
        f"workdir {project} in recipe 'r' holds {entry!r}; mounting it would expose it"
    ]


def test_a_workdir_holding_nested_gcloud_credentials_is_refused(host: Host) -> None:
    project = host.root / "project"
    (project / ".config" / "gcloud").mkdir(parents=True)
    assert _problems(host, project) == [
        f"workdir {project} in recipe 'r' holds '.config/gcloud'; mounting it would expose it"
    ]
    (project / ".config" / "gcloud").rmdir()
    assert _problems(host, project) == []


def test_an_ancestor_of_a_home_with_credentials_is_refused(host: Host) -> None:
    """Mounting /home would expose /home/<user>/.ssh, two levels down."""
    users = host.root / "home"
    alice, bob = users / "alice", users / "bob"
    (alice / ".ssh").mkdir(parents=True)
    (alice / ".config" / "gcloud").mkdir(parents=True)
    bob.mkdir()
    homes = [alice, bob]
    resolved, problems = check_workdir(users, allowed_roots=[host.root], homes=homes)
    assert resolved == users.resolve()
    alice = alice.resolve()
    assert problems == [
        f"holds {alice}/.ssh; mounting it would expose it",
        f"holds {alice}/.config/gcloud; mounting it would expose it",
    ]
    assert check_workdir(bob, allowed_roots=[host.root], homes=homes)[1] == []
    assert check_workdir(alice, allowed_roots=[host.root], homes=homes)[1] == [
        "holds '.ssh'; mounting it would expose it",
        "holds '.config/gcloud'; mounting it would expose it",
    ]


def test_the_assistant_home_and_secrets_are_never_mounted(host: Host) -> None:
    messages = check_workdir(host.home, allowed_roots=[host.home.parent], protected=[host.home])[1]
    assert f"overlaps {host.home.resolve()}, which holds the assistant's secrets or state" in (
        messages
    )
    parent = check_workdir(
        host.home.parent, allowed_roots=[host.home.parent], protected=[host.home]
    )
    assert any("overlaps" in m for m in parent[1])
    secrets = check_workdir(
        host.secrets, allowed_roots=[host.home.parent], protected=[host.secrets]
    )
    assert any(f"overlaps {host.secrets.resolve()}" in m for m in secrets[1])


def test_the_secrets_dir_is_protected_by_load_recipes(host: Host) -> None:
    text = _recipe(host.secrets)
    result = host.load(text)
    assert any("overlaps" in p.message for p in result.problems)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda base: base / "missing", "does not exist"),
        (lambda base: base / "file.txt", "is not a directory"),
    ],
)
def test_a_workdir_must_be_an_existing_directory(host: Host, make: object, message: str) -> None:
    (host.root / "file.txt").write_text("x")
    assert callable(make)
    path = make(host.root)
    assert _problems(host, path) == [f"workdir {path} in recipe 'r' {message}"]


def test_no_allowed_roots_refuses_every_workdir(host: Host) -> None:
    resolved, problems = check_workdir(host.workdir, allowed_roots=[])
    assert resolved == host.workdir.resolve()
    assert problems == ["is not allowed: no recipe roots are configured (ASSISTANT_RECIPE_ROOTS)"]


def test_a_relative_workdir_is_refused_before_touching_the_disk() -> None:
    assert check_workdir(Path("code"), allowed_roots=[Path("/")]) == (
        None,
        ["must be an absolute path"],
    )
