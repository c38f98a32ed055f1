"""Running `cnnsearch` as a user does: the console script in a subprocess, with a clean environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = Path(sys.executable).with_name("cnnsearch")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "search.cli"]
"""The installed console script, as users run it (``python -m search.cli`` where it is not installed)."""


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without cnnsearch settings, plus ``extra``; the checkout importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("CNNSEARCH_STORAGE", "CNNSEARCH_ARTIFACTS")}
    env["PYTHONPATH"] = str(ROOT)
    return {**env, **extra}


def sigint_default() -> None:
    """``preexec_fn`` for a child that a test stops with SIGINT, as Ctrl-C would.

    A process started in the background by a non-interactive shell (a CI runner, ``pytest &``)
    inherits SIGINT as ignored, and Python then installs no KeyboardInterrupt handler in its
    children: without this the child would never see the test's Ctrl-C.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Dashboard:
    """`cnnsearch dashboard` in a subprocess; ``url`` is what it printed."""

    def __init__(self, cwd: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([*CLI, "dashboard", *args], cwd=cwd, env=env or clean_env(), text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     preexec_fn=sigint_default)
        self.first_line = self.proc.stdout.readline().strip()
        if not self.first_line.startswith("dashboard: "):
            self.proc.kill()
            raise AssertionError(f"dashboard did not start: {self.first_line!r} {self.proc.stderr.read()}")
        self.url = self.first_line.split()[1].removesuffix("/dashboard")

    def stop(self) -> tuple[int, str, str]:
        """Ctrl-C; the exit code and the rest of stdout and stderr."""
        self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=15)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
