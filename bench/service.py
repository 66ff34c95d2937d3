"""mailcarrier under test: ``init`` and ``serve`` on a private data folder.

The service gets an environment of its own, built from scratch for the
``MAILCARRIER_*`` variables (any the caller had set are dropped, so a run
does not depend on the shell it came from): submission on two free
loopback ports, relay without AUTH from 127.0.0.0/8 bound to the resource
``default``, and one static route sending every domain to the sink.

``serve`` runs in a session of its own, so the supervisor and the worker
processes it forks form one process group: the group that memory is
sampled over, and that is killed if a gentle stop does not end it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from bench.procs import LOOPBACK, BenchError, Child, free_port, wait_for_banner

PROBLEM = re.compile(r"\b(ERROR|CRITICAL|Traceback)\b")


def console_script() -> str:
    """The ``mailcarrier`` command beside the running interpreter."""
    beside = Path(sys.executable).parent / "mailcarrier"
    if beside.exists():
        return str(beside)
    raise BenchError(f"no mailcarrier command in {beside.parent}; run "
                     "`make install` (or pip install -e .) in the venv first")


class Mailcarrier:
    """One ``mailcarrier serve`` on ``data_dir`` routing all mail to the sink."""

    def __init__(self, data_dir: Path, *, sink_port: int, workers: int | None,
                 log_path: Path, roles: str = "") -> None:
        self.data_dir = data_dir
        self.roles = roles
        self.port = free_port()
        self.tls_port = free_port()
        self.workers = workers
        self.log_path = log_path
        self.child: Child | None = None
        self._log: IO[bytes] | None = None
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("MAILCARRIER_")}
        self.env.update({
            "MAILCARRIER_DATA_DIR": str(data_dir),
            "MAILCARRIER_CONFIG": "/nonexistent.toml",
            "MAILCARRIER_HOSTNAME": "localhost",
            "MAILCARRIER_SMTP_LISTEN": f"{LOOPBACK}:{self.port}",
            "MAILCARRIER_SMTPS_LISTEN": f"{LOOPBACK}:{self.tls_port}",
            "MAILCARRIER_TRUSTED_NETWORKS": "127.0.0.0/8=default",
            "MAILCARRIER_ROUTES": f"*={LOOPBACK}:{sink_port}",
            "MAILCARRIER_LOG_LEVEL": "WARNING",
        })

    @property
    def database(self) -> Path:
        return self.data_dir / "mailcarrier.db"

    def init(self) -> dict[str, Any]:
        """``mailcarrier init --json``: the sender address and friends."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [console_script(), "init", "--json"], env=self.env, cwd=self.data_dir,
            capture_output=True, text=True, timeout=180, check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"mailcarrier init failed ({done.returncode}):\n"
                             f"{done.stderr[-3000:]}")
        try:
            return json.loads(done.stdout)
        except ValueError as exc:
            raise BenchError(f"mailcarrier init printed no JSON:\n"
                             f"{done.stdout[-2000:]}") from exc

    def start(self, *, timeout: float = 120) -> None:
        argv = [console_script(), "serve"]
        if self.workers is not None:
            argv += ["--workers", str(self.workers)]
        if self.roles:
            argv += ["--roles", self.roles]
        # Open for the service's lifetime; closed in stop().
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.child = Child(argv, env=self.env, cwd=self.data_dir,
                           stdin=subprocess.DEVNULL, stdout=self._log,
                           stderr=subprocess.STDOUT)
        try:
            wait_for_banner(self.port, timeout=timeout, alive=self.alive)
        except BenchError as exc:
            self.stop()
            raise BenchError(f"{exc}\nlast lines of {self.log_path}:\n"
                             f"{self.log_tail()}") from exc
        # The first greeting shows one worker is up; give the others a moment.
        time.sleep(1.0)

    def alive(self) -> bool:
        return self.child is not None and not self.child.exited()

    def group(self) -> int | None:
        return self.child.pid if self.child is not None and self.alive() else None

    def stop(self, *, timeout: float = 45) -> int | None:
        """SIGTERM to the supervisor (it stops its workers); then SIGKILL to
        whatever is left of the group."""
        if self.child is None:
            return None
        code = self.child.stop(grace=timeout, leader_only=True)
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    # What the run left behind -------------------------------------------------

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_problems(self) -> dict[str, Any]:
        """How many ERROR/CRITICAL/Traceback lines the log has, and the first."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return {"problemLines": 0, "firstProblems": []}
        problems = [line for line in lines if PROBLEM.search(line)]
        return {"problemLines": len(problems), "firstProblems": problems[:5],
                "logLines": len(lines)}

    def statuses(self) -> dict[str, Any]:
        """Messages by status, read from the database after the run."""
        if not self.database.exists():
            return {}
        uri = f"file:{self.database}?mode=ro"
        try:
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as conn:
                rows = conn.execute(
                    "SELECT status, count(*) FROM messages GROUP BY status"
                ).fetchall()
        except sqlite3.Error as exc:
            return {"error": f"cannot read the database: {exc}"}
        return {status: count for status, count in rows}
