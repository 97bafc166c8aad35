"""Install the project into the venv that runs this script, only when something changed.

`pip install -e` re-checks every requirement each time (15-22 s here even when nothing is
missing), which made every `./scripts/up` slow. The inputs of an install are the lock
(constraints.txt), the project's metadata (pyproject.toml), the extras asked for and the
venv's Python: after a successful install their hash is kept in a stamp in the venv, and
while it still matches nothing is run.

    .venv/bin/python scripts/install.py ml               install when needed
    .venv/bin/python scripts/install.py --check ml       exit 0 up to date, 3 needed
    .venv/bin/python scripts/install.py --mark ml        record the current inputs as installed

A stamp for more extras serves fewer (after `dev,ml,otel`, `ml` is up to date). Delete
.venv/.install-stamp.json to force an install. Standard library only: it runs before the
project's own dependencies are there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = "constraints.txt"
METADATA = "pyproject.toml"
STAMP = ROOT / ".venv" / ".install-stamp.json"
NEEDED = 3  # --check's exit status when an install is needed


def inputs_hash() -> str:
    """What an install depends on: the lock, the metadata and the venv's Python."""
    digest = hashlib.sha256()
    for name in (LOCK, METADATA):
        digest.update(name.encode() + b"\0" + (ROOT / name).read_bytes() + b"\0")
    digest.update("python {}.{}".format(*sys.version_info[:2]).encode())
    return digest.hexdigest()


def parse_extras(text: str) -> set[str]:
    return {part.strip() for part in text.split(",") if part.strip()}


def read_stamp() -> tuple[str, set[str]] | None:
    try:
        data = json.loads(STAMP.read_text())
        return str(data["inputs"]), set(data["extras"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def why_needed(extras: set[str], current: str) -> str | None:
    """None when the venv holds an install of these inputs with these extras, else why not."""
    stamp = read_stamp()
    if stamp is None:
        return "no record of an install in this venv"
    inputs, installed = stamp
    if inputs != current:
        return f"{LOCK} or {METADATA} changed since the last install"
    missing = extras - installed
    if missing:
        return "extras not installed yet: " + ",".join(sorted(missing))
    return None


def mark(extras: set[str], current: str) -> None:
    """Record an install of `extras`, keeping the extras already installed from the same
    inputs."""
    stamp = read_stamp()
    if stamp is not None and stamp[0] == current:
        extras = extras | stamp[1]
    STAMP.parent.mkdir(parents=True, exist_ok=True)
    STAMP.write_text(json.dumps({"inputs": current, "extras": sorted(extras)}) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extras", help="comma-separated extras of pyproject.toml, e.g. dev,ml")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="only say whether to install")
    group.add_argument("--mark", action="store_true", help="record an install made by hand")
    args = parser.parse_args(argv)
    extras = parse_extras(args.extras)
    current = inputs_hash()
    if args.mark:
        mark(extras, current)
        return 0
    reason = why_needed(extras, current)
    if reason is None:
        print(f"install: up to date with {LOCK} and {METADATA} (extras {args.extras})")
        return 0
    print(f"install: {reason}")
    if args.check:
        return NEEDED
    spec = f".[{','.join(sorted(extras))}]" if extras else "."
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    command += ["-c", LOCK, "-e", spec]
    print("install: " + " ".join(command[1:]), flush=True)
    status = subprocess.run(command, cwd=ROOT).returncode
    if status != 0:  # nothing recorded: the next start tries again
        print(f"install: pip failed (exit status {status})", file=sys.stderr)
        return status
    mark(extras, current)
    return 0


if __name__ == "__main__":
    sys.exit(main())
