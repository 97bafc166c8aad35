"""How long a restart takes: from `./scripts/up` starting until `/healthz` answers 200.

Nothing to install (the venv holds what the lock says, scripts/install.py's stamp matches),
so the figure is what every restart costs: the install check and the service's start. The
service runs on a home of its own under /tmp (the database already made by a first start,
as on a real restart) with the local channel and the HTTP listener on free ports.

    .venv/bin/python bench/restart.py                    # 5 restarts, median and each
    .venv/bin/python bench/restart.py --before 244594a~1 # and the scripts/up of that commit

`--before` runs that commit's scripts/up (copied to build/, so it works on this checkout)
the same way, for the figure beside the current one. Standard library only: the figure
includes nothing this process imports.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POLL_S = 0.02


def healthy(home: Path) -> bool:
    try:
        url = json.loads((home / "http.json").read_text())["url"] + "/healthz"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, ValueError, KeyError):  # not written yet, stale, refused, 503
        return False


def one_start(script: Path, home: Path, timeout_s: float) -> float:
    """Seconds from starting `script` until /healthz answers 200; the service is then
    stopped with Ctrl-C (SIGINT), as a user stops it."""
    (home / "http.json").unlink(missing_ok=True)
    env = {
        **os.environ,
        "ASSISTANT_HOME": str(home),
        "ASSISTANT_LOCAL_PORT": "0",
        "ASSISTANT_HTTP": "127.0.0.1:0",
    }
    log = (home / "up.log").open("ab")
    start = time.perf_counter()
    process = subprocess.Popen([str(script)], cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        while not healthy(home):
            if process.poll() is not None:
                raise SystemExit(f"{script} exited {process.returncode}: see {home}/up.log")
            if time.perf_counter() - start > timeout_s:
                raise SystemExit(f"no healthy /healthz after {timeout_s} s: see {home}/up.log")
            time.sleep(POLL_S)
        return time.perf_counter() - start
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def series(script: Path, runs: int, timeout_s: float) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="bench-restart-") as tmp:
        home = Path(tmp)
        one_start(script, home, timeout_s)  # the first start makes the database
        return [one_start(script, home, timeout_s) for _ in range(runs)]


def script_of(rev: str) -> Path:
    """That commit's scripts/up, placed one folder down from the root as scripts/ is."""
    text = subprocess.run(
        ["git", "show", f"{rev}:scripts/up"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    path = ROOT / "build" / "up-before"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def show(label: str, seconds: list[float]) -> None:
    each = " ".join(f"{s:.2f}" for s in seconds)
    print(f"{label:<28} median {statistics.median(seconds):6.2f} s   ({each})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--before", metavar="REV", help="also time this commit's scripts/up")
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    check = [str(ROOT / ".venv" / "bin" / "python"), "scripts/install.py", "--check", "ml"]
    if subprocess.run(check, cwd=ROOT, capture_output=True).returncode != 0:
        print("note: the venv is not up to date with the lock: the first start installs")
    python = sys.version.split()[0]
    print(f"restart: ./scripts/up until /healthz answers 200 ({args.runs} runs, Python {python})")
    show("now (scripts/up)", series(ROOT / "scripts" / "up", args.runs, args.timeout))
    if args.before:
        before = script_of(args.before)
        show(f"before ({args.before})", series(before, args.runs, args.timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
