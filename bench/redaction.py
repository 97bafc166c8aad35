"""The redactor on the hot path: time per call for the texts it sees most.

    python bench/redaction.py [--calls 200000] [--secret-files 5]

Every chat message, reply, event-log field, run log and model request passes the one
redactor. The redactor is built as the service builds it: the configured secrets and a
secrets folder with `--secret-files` files (what declared recipes hand to runs), looked
at again every half second. Mostly the cheap pre-scan decides; a text with a long token
or a telling word gets the full patterns. Target (2-core machine): under 5 us per call
for ordinary chat text, under 20 us for a run log line of 200 characters.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assistant.redaction import Redactor

TEXTS = {
    "chat message": "how is run 42 doing? is the loss still going down after the lr change?",
    "reply": "Run ab12cd (gpt) running · step 1200/6000 · loss 2.3100 · 41.2% MFU · ETA 1h 3m",
    "event json": '{"chat":"tg:1001","sender":"ann","text":"/run logs ab12cd 50"}',
    "run log line": (
        "iter 1200: loss 2.3100, time 312.45ms, mfu 41.23%, lr 6.0e-04, tokens_per_s 131072, "
        "grad_norm 0.8123, checkpoint out/ckpt-001200.pt saved to /workspace/run/out "
        "(2.1 GB) in 1.92s; next eval at iter 1500"
    ),
    "with a token": "use ghp_R7mZ2xQ9vL4kP1sT8wN3yB6cF0hJ5dG2aE9u for the clone, thanks",
}


def per_call_us(redact: Redactor, text: str, calls: int) -> float:
    started = time.perf_counter_ns()
    for _ in range(calls):
        redact(text)
    return (time.perf_counter_ns() - started) / calls / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--secret-files", type=int, default=5)
    args = parser.parse_args()
    configured = [
        "sk-ant-api03-not-a-real-key-0123456789",
        "123456:ABCdefGHIjklMNOpqrSTUvwxYZ012345678",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "secrets"
        folder.mkdir()
        for i in range(args.secret_files):
            (folder / f"secret{i}").write_text(f"not-a-real-secret-{i}-Zq8xV3mN\n")
        redactors = {
            "configured only": Redactor(configured),
            "with secrets folder": Redactor(configured, secrets_dir=folder),
        }
        for name, redact in redactors.items():
            for kind, text in TEXTS.items():
                us = per_call_us(redact, text, args.calls)
                print(f"{name:20s} {kind:13s} {len(text):4d} chars  {us:6.2f} us/call")


if __name__ == "__main__":
    main()
