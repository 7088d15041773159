"""A copy of this checkout in a new git repository, for tests that run the documented commands
and then ask ``git status`` whether they left anything behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def git(*args: str, cwd: Path) -> str:
    """``git args`` in ``cwd`` (a throwaway identity for commits); returns its stdout."""
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout


def require_git() -> None:
    """Skip the test unless git runs and this is a git checkout."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")


def git_copy(folder: Path) -> Path:
    """This checkout's tracked files, as they are in the working tree, copied into ``folder``
    and committed there; skips the test outside a git checkout. Returns ``folder``."""
    require_git()
    for name in git("ls-files", "-z", cwd=ROOT).split("\0"):
        if name and (ROOT / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, folder / name)
    git("init", "-q", cwd=folder)
    git("add", "-A", cwd=folder)
    git("commit", "-qm", "copy", cwd=folder)
    return folder


def copy_environment(folder: Path, **extra: str) -> dict[str, str]:
    """This environment, with the package imported from the copy in ``folder`` and this
    interpreter's scripts (``jupytext``, ``tracer-theory``, …) first on ``PATH``."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PYTHONPATH": str(folder), "PATH": path, **extra}


def untracked_or_modified(folder: Path) -> str:
    """``git status --porcelain`` of the copy, untracked files listed one by one ('' if clean)."""
    return git("status", "--porcelain", "--untracked-files=all", cwd=folder)
