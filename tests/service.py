"""The whole service in a subprocess, for end-to-end tests.

``RunningService`` prepares a data folder and free ports, runs
``mailcarrier init --json`` for credentials, and starts ``mailcarrier
serve`` with the environment a test asks for (resolver, routes, delivery
port). It can be stopped gently, killed with SIGKILL, and started again
on the same data folder.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent / "mailcarrier"

# Every service a test started, so a fixture can stop those a failing test
# left behind (see tests/conftest.py).
STARTED: list[RunningService] = []


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


class RunningService:
    """``mailcarrier serve`` on a private data folder and free ports."""

    def __init__(
        self,
        folder: Path,
        *,
        database_url: str = "",
        env: dict[str, str] | None = None,
        workers: int = 1,
    ) -> None:
        self.folder = folder
        self.smtp_port = free_port()
        self.smtps_port = free_port()
        self.log_path = folder / "service.log"
        self.env = {
            **os.environ,
            "MAILCARRIER_DATA_DIR": str(folder / "data"),
            "MAILCARRIER_HOSTNAME": "localhost",
            "MAILCARRIER_SMTP_LISTEN": f"127.0.0.1:{self.smtp_port}",
            "MAILCARRIER_SMTPS_LISTEN": f"127.0.0.1:{self.smtps_port}",
            "MAILCARRIER_API_LISTEN": f"127.0.0.1:{free_port()}",
            "MAILCARRIER_WORKERS": str(workers),
            "MAILCARRIER_CONFIG": str(folder / "none.toml"),
            **({"MAILCARRIER_DATABASE_URL": database_url} if database_url else {}),
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.credentials: dict[str, Any] = {}

    def init(self) -> dict[str, Any]:
        out = subprocess.run(
            [str(BIN), "init", "--json"], env=self.env, cwd=self.folder,
            capture_output=True, check=True, timeout=120,
        )
        self.credentials = json.loads(out.stdout)
        return self.credentials

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN), *args], env=self.env, cwd=self.folder, capture_output=True,
            text=True, check=check, timeout=120,
        )

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        if not self.credentials:
            self.init()
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(BIN), "serve"], env=self.env, cwd=self.folder,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        STARTED.append(self)
        try:
            wait_for_port("127.0.0.1", self.smtp_port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"service did not start:\n{self.log()}") from None

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL the supervisor and every worker at once."""
        if self.process is None:
            return
        # Only while the supervisor is unreaped does its pid still name its
        # process group; after that the number may belong to someone else.
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()
        self.process = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> RunningService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
