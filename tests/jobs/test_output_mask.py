"""The agent masks a run's secrets in its output however the output is cut into reads."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

from assistant.jobs.output_mask import MARK, OutputMasker, copy_masked, secret_patterns

SECRET = "tok-Zq8xV3mN-9f"


def masked(chunks: list[bytes], values: tuple[str, ...] = (SECRET,)) -> bytes:
    masker = OutputMasker(secret_patterns(values))
    return b"".join(masker.feed(c) for c in chunks) + masker.close()


def test_a_value_split_at_every_point_is_masked() -> None:
    text = f"before {SECRET} middle {SECRET}{SECRET} after\n".encode()
    want = b"before " + MARK + b" middle " + MARK + MARK + b" after\n"
    for cut in range(len(text) + 1):
        assert masked([text[:cut], text[cut:]]) == want, cut


def test_seeded_random_reads_never_let_a_value_through() -> None:
    rng = random.Random(11)
    for _ in range(300):
        parts = [rng.choice([SECRET, "x", "tok-", "tok-Zq8", " ", "\n", "tok-Zq8xV3mN-9"])]
        parts += [rng.choice([SECRET, "ab", "tok-Zq", "\n", "tok"]) for _ in range(20)]
        text = "".join(parts).encode()
        cuts = sorted(rng.sample(range(len(text) + 1), min(6, len(text) + 1)))
        chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        out = masked(chunks)
        assert SECRET.encode() not in out
        assert out == text.replace(SECRET.encode(), MARK)


def test_only_a_possible_start_of_a_secret_is_held_back() -> None:
    masker = OutputMasker(secret_patterns([SECRET]))
    assert masker.feed(b"iter 10: loss 2.31\n") == b"iter 10: loss 2.31\n"
    assert masker.feed(b"no newline, ") == b"no newline, "
    assert masker.feed(b"ends with tok-Zq") == b"ends with "
    assert masker.feed(b"uite ordinary\n") == b"tok-Zquite ordinary\n"


def test_multi_line_secrets_and_short_values() -> None:
    key = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END KEY-----"
    patterns = secret_patterns([key, "abc"])
    assert b"abc" not in patterns  # too short: it would mask ordinary words
    out = masked([b"line MIIEvQIBADANBgkqhkiG9w0BAQEFAASC end\n"], (key,))
    assert out == b"line " + MARK + b" end\n"


def test_copy_masked_drains_a_real_pipe(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        f"s = {SECRET!r}\n"
        "sys.stdout.write('a ' + s[:5]); sys.stdout.flush(); time.sleep(0.05)\n"
        "sys.stdout.write(s[5:] + ' b\\n'); sys.stdout.flush()\n"
        "sys.stdout.write('x' * 200000 + s + '\\n')\n"
    )
    log = tmp_path / "stdout.log"
    with log.open("ab", buffering=0) as out:
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        thread = copy_masked(proc.stdout, out, secret_patterns([SECRET]))
        assert proc.wait(30) == 0
        thread.join(10)
    assert not thread.is_alive()
    data = log.read_bytes()
    assert SECRET.encode() not in data
    assert data == b"a " + MARK + b" b\n" + b"x" * 200000 + MARK + b"\n"


def test_a_log_that_stops_taking_data_never_blocks_the_command(tmp_path: Path) -> None:
    """The log is closed while the command still prints 4 MiB: the pipe is drained anyway."""
    script = "import sys\nfor _ in range(64):\n    sys.stdout.write('y' * 65536)\n"
    out = (tmp_path / "stdout.log").open("ab", buffering=0)
    out.close()  # as if the log went away (closed, disk full) before the first write
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    thread = copy_masked(proc.stdout, out, secret_patterns([SECRET]))
    assert proc.wait(30) == 0  # a blocked writer would never exit
    thread.join(10)
    assert not thread.is_alive()
