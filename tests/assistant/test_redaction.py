from __future__ import annotations

import pytest

from assistant.redaction import MARK, Redactor, truncate


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
