from __future__ import annotations

import os
from pathlib import Path

import pytest

from assistant.redaction import MARK, SECRET_FILE_LIMIT, Redactor, truncate


@pytest.mark.parametrize(
    "text",
    [
        "xoxb-123456789012-abcdefghijkl",
        "xapp-1-A0123456789-abcdef",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "AKIAABCDEFGHIJKLMNOP",
        "hf_abcdefghijklmnopqrstuvwxyzABCDEF",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----",
    ],
)
def test_known_shapes(text: str) -> None:
    out = Redactor()(f"before {text} after")
    assert out == f"before {MARK} after"


def test_a_short_configured_secret_is_caught_despite_the_fast_path() -> None:
    redact = Redactor(["pw42"])
    assert redact("login with pw42 please") == f"login with {MARK} please"


def test_labels_keep_their_name() -> None:
    out = Redactor()('{"api_key": "abc123", "Authorization": "Bearer tok.en.value"}')
    assert out == f'{{"api_key": "{MARK}", "Authorization": "Bearer {MARK}"}}'


def test_ordinary_text_passes_untouched() -> None:
    text = "iter 200: loss 2.31, time 12.3ms, mfu 41.2% — run r7 at step 2000/60000"
    assert Redactor(["hunter2"])(text) == text


def test_truncate_respects_utf8_boundaries() -> None:
    out = truncate("€" * 5000, limit=1000)
    assert len(out.encode()) <= 1000 and out.endswith("bytes]")
    out.encode("utf-8")  # never half a character


# Realistic examples: the lengths and alphabets each issuer uses.
TOKEN_SHAPES = {
    "jwt": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0"
    ".dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "jwt, unsigned": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.",
    "github classic": "ghp_R7mZ2xQ9vL4kP1sT8wN3yB6cF0hJ5dG2aE9u",
    "github oauth": "gho_16C7e42F292c6912E7710c838347Ae178B4a",
    "github fine-grained": "github_pat_11AHZ4K3I0qLm8sNwXyZaB_"
    "pQ7rS2tU9vW4xY1zA6bC3dE8fG5hJ0kL7mN2oP9qR4sT1uV6wX3yZ8aB5cD0eF",
    "hugging face": "hf_kLmNoPqRsTuVwXyZaBcDeFgHiJkLmNoPqR",
    "anthropic": "sk-ant-api03-Xy7_kQ2-mN9vB4cL1pR8sT3wZ6aD0fG5hJ2kL9nM4qR7tV1xY8zB3cF6gH0jK"
    "5mN2pQ9sT4vW7yZ1bD6eG3hJ8kM0nP5qS2tV9wX4zA7cE1fH6jK3mN8pQ0sT5vW2yA-bCdEfAA",
    "openai project": "sk-proj-Ab3Cd5Ef7Gh9Ij1Kl3Mn5Op7Qr9St1Uv3Wx5Yz7Ab9Cd1Ef3Gh5Ij7Kl9Mn1_Op3Q",
    "openai legacy": "sk-Ab3Cd5Ef7Gh9Ij1Kl3Mn5T3BlbkFJOp7Qr9St1Uv3Wx5Yz7Ab",
    "slack bot": "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "slack user": "xoxp-123456789012-123456789012-1234567890123-0123456789abcdef0123456789abcdef",
    "slack app": "xoxa-2-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "aws access key": "AKIAIOSFODNN7EXAMPLE",
    "aws temporary key": "ASIAJ3EXAMPLE7QWERTY",
    "gitlab": "glpat-xYz12AbC3dEf45GhIjKl",
    "google": "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY",
}


@pytest.mark.parametrize("kind", sorted(TOKEN_SHAPES))
def test_common_token_shapes_are_masked_wherever_they_stand(kind: str) -> None:
    token = TOKEN_SHAPES[kind]
    redact = Redactor()
    for text in (f"here: {token}", f"KEY={token}.", f'{{"k":"{token}"}}', f"({token})"):
        out = redact(text)
        assert token not in out and MARK in out, (kind, out)


def test_a_bare_bearer_token_is_masked_and_the_word_kept() -> None:
    redact = Redactor()
    jwt = TOKEN_SHAPES["jwt"]
    assert redact(f"curl -H 'X-Auth: Bearer {jwt}'") == f"curl -H 'X-Auth: Bearer {MARK}'"
    assert redact("bearer 4f9a0c2e7b1d6a3f") == f"bearer {MARK}"
    assert redact("the bearer of bad news") == "the bearer of bad news"


def test_credentials_in_a_url_lose_their_password() -> None:
    out = Redactor()("cloning https://bob:s3cretpw@git.example.com/repo.git")
    assert out == f"cloning https://bob:{MARK}@git.example.com/repo.git"


def test_run_metrics_that_name_tokens_are_left_alone() -> None:
    text = "step 40: tokens_per_s=1234.5 max_new_tokens=256 num_tokens: 8192"
    assert Redactor()(text) == text


def test_a_configured_secret_is_masked_in_its_json_form_too() -> None:
    secret = 'pa"ss\\word-42'
    out = Redactor([secret]).clean({"text": f"it is {secret}"})
    assert out is not None and "pa" not in out and MARK in out, out


def test_every_file_in_the_secrets_folder_is_a_secret(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "hf_token").write_text("plain-value-1\n")
    (folder / "key.pem").write_text("line-one-of-the-key\nline-two-of-the-key\n")
    redact = Redactor(secrets_dir=folder, recheck_s=0)
    assert redact("a plain-value-1 b") == f"a {MARK} b"
    assert redact("line-two-of-the-key") == MARK  # a run may print a file line by line

    (folder / "added").write_text("added-later-77")  # new while the service runs
    assert redact("x added-later-77") == f"x {MARK}"
    (folder / "hf_token").write_text("rewritten-in-place-88")  # same file, new value
    assert redact("x rewritten-in-place-88") == f"x {MARK}"


def test_the_secrets_folder_never_blocks_or_floods(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    folder.mkdir()
    os.mkfifo(folder / "pipe")  # opening it for reading would block forever
    (folder / "huge").write_bytes(b"A" * (SECRET_FILE_LIMIT * 4))
    (folder / "ok").write_text("still-known-99")
    redact = Redactor(secrets_dir=folder, recheck_s=0)
    assert redact("still-known-99") == MARK


def test_a_missing_secrets_folder_is_no_error(tmp_path: Path) -> None:
    redact = Redactor(["configured-1"], secrets_dir=tmp_path / "absent", recheck_s=0)
    assert redact("configured-1 and more") == f"{MARK} and more"
