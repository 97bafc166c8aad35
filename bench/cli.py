"""The everyday CLI's round trip: `assistant send /status` against a running service.

    python bench/cli.py [--calls 20]

Starts `assistant up` on a fresh home (process runner, no GPUs, no platforms), then times
N calls of `assistant send /status` as a user runs it (a new interpreter each time:
start-up, imports, settings, connect, the command, the reply, exit), beside N calls of
`python -c pass`, the floor no CLI in Python can go under. Prints the medians and their
ratio. Target on the 2-core machine: a round trip under 150 ms.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSISTANT_")}
    env.update(
        ASSISTANT_HOME=str(home),
        ASSISTANT_LOCAL_PORT="0",
        ASSISTANT_HTTP="off",
        ASSISTANT_RUNNER="process",
        ASSISTANT_GPUS="none",
    )
    return env


def _median_ms(argv: list[str], env: dict[str, str], calls: int) -> float:
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
        times.append((time.perf_counter() - started) * 1000)
        if done.returncode != 0:
            sys.exit(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        env = _env(home)
        service = subprocess.Popen(
            [sys.executable, "-m", "assistant", "up"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while not (home / "local-channel.json").exists():
                if service.poll() is not None or time.monotonic() > deadline:
                    sys.exit("assistant up did not start")
                time.sleep(0.05)
            assistant = str(Path(sys.executable).with_name("assistant"))
            send = [assistant, "send", "/status"]
            _median_ms(send, env, 2)  # warm the page cache
            floor = _median_ms([sys.executable, "-c", "pass"], env, args.calls)
            round_trip = _median_ms(send, env, args.calls)
        finally:
            service.send_signal(signal.SIGTERM)
            service.wait(30)
    print(f"python -c pass           median {floor:7.1f} ms  ({args.calls} calls)")
    print(f"assistant send /status   median {round_trip:7.1f} ms  ({args.calls} calls)")
    print(f"ratio to the floor       {round_trip / floor:7.1f}x   (target: under 150 ms)")


if __name__ == "__main__":
    main()
