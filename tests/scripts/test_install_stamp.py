"""scripts/install.py runs pip only when the lock, pyproject.toml or the extras changed.

The real script runs in a copy of the project's inputs (its venv's stamp stays under
tmp_path); `--check` asks whether an install is due without running one, `--mark` records
one as done, as a real install does once pip has succeeded.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NEEDED = 3


def copy_of_project(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "install.py", tmp_path / "scripts" / "install.py")
    for name in ("constraints.txt", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / ".venv").mkdir()
    return tmp_path


def install(
    root: Path, *args: str, python: str = sys.executable
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, str(root / "scripts" / "install.py"), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_venv_with_no_record_needs_an_install(tmp_path: Path) -> None:
    root = copy_of_project(tmp_path)
    done = install(root, "--check", "ml")
    assert done.returncode == NEEDED
    assert "no record of an install" in done.stdout


def test_unchanged_inputs_need_no_install(tmp_path: Path) -> None:
    root = copy_of_project(tmp_path)
    assert install(root, "--mark", "ml").returncode == 0
    done = install(root, "--check", "ml")
    assert done.returncode == 0, done.stdout
    assert "up to date" in done.stdout
    # the real command too, with a Python that has no pip: a pip run would fail
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "bare")], check=True)
    done = install(root, "ml", python=str(root / "bare" / "bin" / "python"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pip" not in done.stdout
    # and the same Python does try pip when the lock changed: proof the check above could fail
    (root / "constraints.txt").write_text("ruff==0.0.1\n")
    done = install(root, "ml", python=str(root / "bare" / "bin" / "python"))
    assert done.returncode != 0
    assert "No module named pip" in done.stderr
    assert "install: pip failed" in done.stderr
    # a failed install is not recorded: the next start tries again
    assert install(root, "--check", "ml").returncode == NEEDED


def test_a_changed_lock_needs_an_install(tmp_path: Path) -> None:
    root = copy_of_project(tmp_path)
    install(root, "--mark", "dev,ml,otel")
    lock = root / "constraints.txt"
    lock.write_text(lock.read_text().replace("ruff==", "ruff==0.0.1\n#ruff=="))
    done = install(root, "--check", "ml")
    assert done.returncode == NEEDED
    assert "constraints.txt or pyproject.toml changed" in done.stdout
    # once installed again, the new lock is the recorded one
    install(root, "--mark", "ml")
    assert install(root, "--check", "ml").returncode == 0


def test_changed_metadata_needs_an_install(tmp_path: Path) -> None:
    root = copy_of_project(tmp_path)
    install(root, "--mark", "ml")
    metadata = root / "pyproject.toml"
    metadata.write_text(metadata.read_text().replace('version = "', 'version = "9'))
    assert install(root, "--check", "ml").returncode == NEEDED


def test_an_install_with_more_extras_serves_fewer_not_more(tmp_path: Path) -> None:
    root = copy_of_project(tmp_path)
    install(root, "--mark", "dev,ml,otel")  # what scripts/test installs
    assert install(root, "--check", "ml").returncode == 0  # what scripts/up needs
    (tmp_path / "other").mkdir()
    root2 = copy_of_project(tmp_path / "other")
    install(root2, "--mark", "ml")
    done = install(root2, "--check", "dev,ml,otel")
    assert done.returncode == NEEDED
    assert "extras not installed yet: dev,otel" in done.stdout
    # the extras of one install are kept by the next with the same inputs
    install(root2, "--mark", "dev,otel")
    assert install(root2, "--check", "dev,ml,otel").returncode == 0
