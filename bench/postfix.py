"""Postfix on this machine: its test tools and a private relay instance.

* :func:`ensure_tools` finds ``postfix``, ``postconf``, ``smtp-source`` and
  ``smtp-sink``, installing Debian's ``postfix`` package when one is
  missing (as root; the package is preseeded to "No configuration", so
  installing it starts no system mail server).
* :class:`Sink` is ``smtp-sink`` on a free loopback port, the final
  destination of every run. Its counter (``-c``) is bumped when the final
  dot of a message arrives, so the moment it reaches the number sent is
  the moment the last message reached its destination.
* :func:`start_source` runs ``smtp-source``, the load, with its own
  counter of completed DATA commands.
* :class:`PostfixRelay` is a Postfix instance of its own (configuration,
  queue and data folders in one directory, started with ``postfix -c``)
  relaying everything from 127.0.0.1 to the sink. It shares nothing with
  a system Postfix and is stopped and removed afterwards.

``smtp-source`` writes the header ``From: <sender>`` from its ``-f``
option, so the header and envelope senders agree, as mailcarrier demands.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.procs import (
    LOOPBACK,
    BenchError,
    CountingProcess,
    run_on_terminal,
    wait_for_banner,
)

TOOLS = ("postfix", "postconf", "smtp-source", "smtp-sink")
SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"]
)
SINK_COUNTER = re.compile(rb"mesg=(\d+)")
SOURCE_COUNTER = re.compile(rb"^\s*(\d+)\s*$")


@dataclass(frozen=True)
class Tools:
    postfix: str
    postconf: str
    smtp_source: str
    smtp_sink: str

    def version(self) -> str:
        done = subprocess.run(
            [self.postconf, "-h", "mail_version"], capture_output=True, text=True,
            timeout=30, check=False,
        )
        return done.stdout.strip() or "unknown"


def _find() -> dict[str, str | None]:
    return {name: shutil.which(name, path=SEARCH_PATH) for name in TOOLS}


def ensure_tools(say: Callable[[str], None]) -> Tools:
    """The Postfix programs, installed with apt first if one is missing."""
    found = _find()
    missing = [name for name, path in found.items() if path is None]
    if missing:
        say(f"Postfix tools missing ({', '.join(missing)}); installing postfix")
        _install_postfix()
        found = _find()
        missing = [name for name, path in found.items() if path is None]
        if missing:
            raise BenchError(f"still missing after installing postfix: {missing}")
    return Tools(
        postfix=str(found["postfix"]), postconf=str(found["postconf"]),
        smtp_source=str(found["smtp-source"]), smtp_sink=str(found["smtp-sink"]),
    )


def _install_postfix() -> None:
    if os.geteuid() != 0:
        raise BenchError(
            "Postfix is not installed and this is not root; run "
            "`sudo apt-get install postfix` (choose 'No configuration') first"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if shutil.which("debconf-set-selections"):
        subprocess.run(
            ["debconf-set-selections"], env=env, timeout=60, check=False,
            input="postfix postfix/main_mailer_type select No configuration\n",
            text=True,
        )
    steps = (
        (["apt-get", "update"], 600),
        (["apt-get", "install", "-y", "--no-install-recommends", "postfix"], 900),
    )
    for argv, limit in steps:
        done = subprocess.run(argv, env=env, timeout=limit, check=False,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")


# The sink and the source ------------------------------------------------------


def _unprivileged_user() -> list[str]:
    # smtp-sink refuses to run as root without -u.
    return ["-u", "nobody"] if os.geteuid() == 0 else []


class Sink:
    """``smtp-sink`` counting the messages that reach it."""

    def __init__(self, tools: Tools, port: int) -> None:
        self.port = port
        self.counter = CountingProcess(
            [tools.smtp_sink, *_unprivileged_user(), "-c",
             f"{LOOPBACK}:{port}", "1024"],
            SINK_COUNTER,
        )
        wait_for_banner(port, timeout=15, alive=self.counter.alive)

    @property
    def received(self) -> int:
        return self.counter.count

    def close(self) -> None:
        self.counter.stop()


@dataclass(frozen=True)
class Load:
    """What smtp-source sends: the same for every run."""

    messages: int
    sessions: int
    size: int
    sender: str
    recipient: str

    def argv(self, tools: Tools, port: int) -> list[str]:
        return [
            tools.smtp_source, "-c",
            "-s", str(self.sessions), "-m", str(self.messages),
            "-l", str(self.size), "-f", self.sender, "-t", self.recipient,
            f"{LOOPBACK}:{port}",
        ]


def start_source(tools: Tools, load: Load, port: int) -> CountingProcess:
    return CountingProcess(load.argv(tools, port), SOURCE_COUNTER)


# A private Postfix relay --------------------------------------------------------

MAIN_CF = """\
# A private Postfix instance for bench.relay: a plain relay from
# 127.0.0.1 to the sink, nothing delivered locally, no DNS, no TLS.
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = {log}
maillog_file_prefixes = {log_dir}
myhostname = relay.bench.localhost
mydomain = bench.localhost
myorigin = $myhostname
inet_interfaces = {host}
inet_protocols = ipv4
mydestination =
local_recipient_maps =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
relayhost = [{host}]:{sink_port}
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
default_destination_concurrency_limit = {concurrency}
smtp_tls_security_level = none
smtpd_tls_security_level = none
disable_dns_lookups = yes
smtp_host_lookup = native
biff = no
"""

# Debian's master.cf without chroot (this instance has no chroot jail) and
# with the SMTP server on a private loopback port.
MASTER_CF = """\
{host}:{port} inet n - n - - smtpd
pickup     unix  n - n 60 1 pickup
cleanup    unix  n - n -  0 cleanup
qmgr       unix  n - n 300 1 qmgr
rewrite    unix  - - n -  - trivial-rewrite
bounce     unix  - - n -  0 bounce
defer      unix  - - n -  0 bounce
trace      unix  - - n -  0 bounce
verify     unix  - - n -  1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -  - proxymap
proxywrite unix  - - n -  1 proxymap
smtp       unix  - - n -  - smtp
relay      unix  - - n -  - smtp
showq      unix  n - n -  - showq
error      unix  - - n -  - error
retry      unix  - - n -  - error
discard    unix  - - n -  - discard
anvil      unix  - - n -  1 anvil
scache     unix  - - n -  1 scache
postlog    unix-dgram n - n - 1 postlogd
"""


class PostfixRelay:
    """A Postfix instance in ``root`` relaying to ``sink_port``.

    Its mail log goes to ``log_path``, which outlives the instance.
    """

    def __init__(self, tools: Tools, root: Path, *, port: int, sink_port: int,
                 concurrency: int, log_path: Path) -> None:
        if os.geteuid() != 0:
            raise BenchError("a private Postfix instance needs root to start")
        self.tools = tools
        self.root = root
        self.port = port
        self.config = root / "etc"
        self.log_path = log_path
        for name in ("etc", "queue", "data"):
            (root / name).mkdir(parents=True, exist_ok=True)
        shutil.chown(root / "data", "postfix", "postfix")
        (self.config / "main.cf").write_text(MAIN_CF.format(
            root=root, host=LOOPBACK, sink_port=sink_port, concurrency=concurrency,
            log=log_path, log_dir=log_path.parent))
        (self.config / "master.cf").write_text(MASTER_CF.format(
            host=LOOPBACK, port=port))

    def _postfix(self, command: str, *, timeout: float = 120) -> tuple[int, str]:
        return run_on_terminal(
            [self.tools.postfix, "-c", str(self.config), command], timeout=timeout)

    def start(self) -> None:
        code, output = self._postfix("check")
        if code != 0:
            raise BenchError(f"postfix check failed:\n{output}")
        code, output = self._postfix("start")
        if code != 0:
            raise BenchError(f"postfix start failed:\n{output}\n{self.log_tail()}")
        wait_for_banner(self.port, timeout=30,
                        alive=lambda: self.master_pid() is not None)

    def master_pid(self) -> int | None:
        """The running master of this instance (not a process that reused
        the number in a stale pid file)."""
        try:
            pid = int((self.root / "queue/pid/master.pid").read_text().split()[0])
            program = Path(f"/proc/{pid}/comm").read_text().strip()
        except (OSError, ValueError, IndexError):
            return None
        return pid if program == "master" else None

    def stop(self) -> None:
        """Stop the instance; kill what is left after a grace period."""
        pid = self.master_pid()
        if pid is None:
            return
        code, _output = self._postfix("stop", timeout=60)
        deadline = time.monotonic() + 30
        while code == 0 and self.master_pid() is not None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if self.master_pid() is not None:
            self._postfix("abort", timeout=30)
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_summary(self) -> dict[str, object]:
        """Counts of delivery outcomes and the warnings in the mail log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return {}
        statuses: dict[str, int] = {}
        for found in re.finditer(r" status=(\w+)", text):
            statuses[found.group(1)] = statuses.get(found.group(1), 0) + 1
        problems = [line for line in text.splitlines()
                    if re.search(r"(warning|error|fatal|panic):", line)]
        return {"statuses": statuses, "problemLines": len(problems),
                "firstProblems": problems[:5]}
