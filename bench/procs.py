"""Process plumbing for the benchmarks: ports, counters, memory, banners.

Postfix's test tools print their running counters (``-c``) only to a
terminal: into a pipe their output stays buffered until they exit. So a
:class:`CountingProcess` runs its program on a pseudo-terminal and follows
the counter from a reader thread, noting the moment the count reaches a
target. Memory and CPU are sampled from ``/proc`` (no extra dependency): the sum
of ``VmRSS`` (what ``ps`` shows, counting shared pages once per process)
and of ``Pss`` (shared pages split between their sharers) over a process
group, and the CPU time its processes used.

Every wait here has a deadline; nothing blocks without one.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import socket
import subprocess
import threading
import time
import tty
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"


class BenchError(RuntimeError):
    """A benchmark step cannot go on; the text says what happened."""


# Ports -----------------------------------------------------------------------

_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on the loopback address that nothing listens on now.

    The port is free when this returns; a port is never handed out twice in
    one run, so two listeners of the same run cannot collide.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise BenchError("could not find a free port on 127.0.0.1")


def wait_for_banner(port: int, *, timeout: float, alive: Callable[[], bool]) -> None:
    """Wait until an SMTP server on ``port`` greets with 220, then QUIT.

    ``alive`` says whether the server's process still runs, so a server
    that died while starting is reported at once instead of at the timeout.
    """
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while time.monotonic() < deadline:
        if not alive():
            raise BenchError(f"the server for port {port} exited while starting")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=2) as sock:
                sock.settimeout(5)
                greeting = sock.recv(512)
                if greeting.startswith(b"220"):
                    sock.sendall(b"QUIT\r\n")
                    return
                last_error = f"greeting {greeting[:80]!r}"
        except OSError as exc:
            last_error = str(exc)
        time.sleep(0.1)
    raise BenchError(f"no SMTP greeting on port {port} after {timeout:.0f}s "
                     f"({last_error})")


# Commands with their terminal output ------------------------------------------


def run_on_terminal(argv: Sequence[str], *, timeout: float,
                    env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a command on a pseudo-terminal; return its exit code and output.

    Postfix's commands write their messages to stderr only when it is a
    terminal (otherwise to the mail log alone), hence the terminal.
    """
    master, slave = pty.openpty()
    tty.setraw(slave)
    try:
        child = Child(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                      env=env)
    finally:
        os.close(slave)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer has closed the terminal
                    chunk = b""
                if not chunk:
                    break
                output += chunk
            elif child.exited():
                break
        else:
            child.stop(grace=5)
            raise BenchError(f"{' '.join(argv)} did not finish in {timeout:.0f}s")
        if not child.wait_exit(max(1.0, deadline - time.monotonic())):
            child.stop(grace=5)
            raise BenchError(f"{' '.join(argv)} did not exit in {timeout:.0f}s")
        # Reaped without signalling the group: `postfix start` leaves a
        # daemon behind, in a session of its own, that must live on.
        code = child.process.wait(timeout=10)
    finally:
        os.close(master)
    return code, output.decode("utf-8", "replace").replace("\r", "").strip()


# Children in process groups of their own ----------------------------------------


class Child:
    """A child process leading its own process group, signalled safely.

    A process id is free for reuse once its process is reaped, and then so
    is the group id named after it: signalling the group after that could
    hit an unrelated program that happened to get the number. So exits are
    observed without reaping (``waitid`` with ``WNOWAIT``), the group is
    signalled only while the leader is unreaped (alive or a zombie, either
    way holding its id), and the leader is reaped last, in :meth:`stop`.
    """

    def __init__(self, argv: Sequence[str], **popen: Any) -> None:
        self.process = subprocess.Popen(list(argv), start_new_session=True, **popen)
        self.pid = self.process.pid
        self._status: int | None = None

    def _check(self, flags: int) -> bool:
        if self._status is not None:
            return True
        if self.process.returncode is not None:  # reaped already
            self._status = self.process.returncode
            return True
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT | flags)
        except ChildProcessError:
            self._status = self.process.poll()
            return True
        if info is None:
            return False
        code = info.si_status
        self._status = code if info.si_code == os.CLD_EXITED else -code
        return True

    def exited(self) -> bool:
        return self._check(os.WNOHANG)

    def block_until_exit(self) -> None:
        self._check(0)

    @property
    def returncode(self) -> int | None:
        return self._status if self.exited() else None

    def wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.exited():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def signal_group(self, sig: int) -> None:
        if self.process.returncode is None:  # not reaped: the id is still ours
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, *, grace: float, leader_only: bool = False) -> int | None:
        """SIGTERM, ``grace`` seconds, then SIGKILL to whatever is left."""
        if not self.exited():
            if leader_only:
                self.process.send_signal(signal.SIGTERM)
            else:
                self.signal_group(signal.SIGTERM)
            self.wait_exit(grace)
        self.signal_group(signal.SIGKILL)  # stragglers, even if the leader is gone
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        return self.returncode


# Programs with a running counter ---------------------------------------------


class CountingProcess:
    """A program whose running counter is followed as it prints it.

    ``counter`` matches one update of the counter and captures the number;
    updates end with a carriage return. Whatever else the program prints
    (a fatal error, say) is kept in :attr:`other_output`.
    """

    def __init__(self, argv: Sequence[str], counter: re.Pattern[bytes],
                 *, env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self._counter = counter
        self._lock = threading.Condition()
        self.count = 0
        self.started_at = time.monotonic()
        self.first_at: float | None = None
        self.changed_at = self.started_at  # when the count last went up
        self.exited_at: float | None = None
        self._target: int | None = None
        self.reached_at: float | None = None
        self._other = bytearray()
        master, slave = pty.openpty()
        tty.setraw(slave)
        try:
            self.child = Child(self.argv, stdin=subprocess.DEVNULL, stdout=slave,
                               stderr=slave, env=env)
        finally:
            os.close(slave)
        self.process = self.child.process
        self._master = master
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name=f"read {self.argv[0]}")
        self._waiter = threading.Thread(target=self._wait, daemon=True,
                                        name=f"wait {self.argv[0]}")
        self._reader.start()
        self._waiter.start()

    # Reading the counter ------------------------------------------------------

    def _read(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # EIO once the program has exited
                chunk = b""
            if not chunk:
                break
            now = time.monotonic()
            pending += chunk
            *complete, pending = re.split(rb"[\r\n]", pending)
            self._take(complete, now)
        self._take([pending], time.monotonic())

    def _take(self, updates: list[bytes], now: float) -> None:
        latest = None
        for update in updates:
            found = self._counter.search(update)
            if found:
                latest = int(found.group(1))
            elif update.strip() and len(self._other) < 65536:
                self._other += update.strip() + b"\n"
        if latest is None:
            return
        with self._lock:
            if self.first_at is None and latest > 0:
                self.first_at = now
            if latest > self.count:
                self.count = latest
                self.changed_at = now
            if (self._target is not None and self.reached_at is None
                    and self.count >= self._target):
                self.reached_at = now
            self._lock.notify_all()

    def _wait(self) -> None:
        self.child.block_until_exit()
        with self._lock:
            self.exited_at = time.monotonic()
            self._lock.notify_all()

    # What callers use ---------------------------------------------------------

    def expect(self, target: int) -> None:
        """Note the moment the counter reaches ``target`` (from now on)."""
        with self._lock:
            self._target = target
            if self.count >= target and self.reached_at is None:
                self.reached_at = time.monotonic()

    @property
    def returncode(self) -> int | None:
        return self.child.returncode

    @property
    def other_output(self) -> str:
        return self._other.decode("utf-8", "replace").strip()

    def alive(self) -> bool:
        return not self.child.exited()

    def stop(self, *, timeout: float = 10.0) -> None:
        """End the program (its whole process group) and the reader."""
        self.child.stop(grace=timeout)
        self._reader.join(timeout=5)
        self._waiter.join(timeout=5)
        try:
            os.close(self._master)
        except OSError:
            pass


# Memory and CPU of process groups ------------------------------------------------

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class GroupUsage:
    """What one process group used while it was sampled."""

    rss_kib: int = 0  # peak of the sum of VmRSS over the group
    pss_kib: int = 0  # peak of the sum of Pss over the group
    processes: int = 0  # most processes seen in the group at once
    cpu_seconds: float = 0.0


def group_members(pgid: int) -> dict[int, int]:
    """The processes in group ``pgid``, each with its CPU ticks so far."""
    members = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_bytes()
        except OSError:
            continue
        # Fields after the command name, which may itself hold spaces or ")":
        # state ppid pgrp ... utime (12th) stime (13th).
        fields = stat[stat.rindex(b")") + 2:].split()
        if int(fields[2]) == pgid:
            members[int(entry.name)] = int(fields[11]) + int(fields[12])
    return members


def _memory_kib(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
                break
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
                break
    except (OSError, ValueError, IndexError):
        pass
    return rss, pss


def machine_busy_ticks() -> int:
    """CPU ticks spent on anything but idling, summed over all CPUs."""
    first = Path("/proc/stat").read_text().split("\n", 1)[0]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in first.split()[1:9])
    return user + nice + system + irq + softirq + steal


def self_cpu_seconds() -> float:
    """CPU this process (every thread) has used so far."""
    times = os.times()
    return times.user + times.system


class _Tracked:
    def __init__(self, group: Callable[[], int | None], memory: bool) -> None:
        self.group = group
        self.memory = memory
        self.usage = GroupUsage()
        self.baseline: dict[int, int] | None = None
        self.ticks: dict[int, int] = {}  # last seen, per pid


class GroupSampler:
    """Samples process groups' CPU (and memory) every ``interval`` seconds.

    Each group is named by a function returning its id (None while there
    is none yet), so the sampler can follow a server that daemonizes
    itself. CPU counts only what a group used after sampling began; a
    process that exits between two samples loses its last fraction of a
    second. The machine's busy CPU time over the same window shows how
    much of it went to processes outside the benchmark.
    """

    def __init__(self, interval: float = 0.2) -> None:
        self._interval = interval
        self._groups: dict[str, _Tracked] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="group sampler")
        self._started = 0.0
        self._busy_at_start = 0
        self._self_at_start = 0.0

    def watch(self, name: str, group: Callable[[], int | None], *,
              memory: bool = False) -> GroupSampler:
        self._groups[name] = _Tracked(group, memory)
        return self

    def start(self) -> GroupSampler:
        self._started = time.monotonic()
        self._busy_at_start = machine_busy_ticks()
        self._self_at_start = self_cpu_seconds()
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        """Stop sampling; return each group's usage and the machine's."""
        self._stopping.set()
        self._thread.join(timeout=5)
        wall = time.monotonic() - self._started
        busy = (machine_busy_ticks() - self._busy_at_start) / TICKS
        report: dict[str, Any] = {"wallSeconds": round(wall, 2),
                                  "machineBusyCpuSeconds": round(busy, 1)}
        known = self_cpu_seconds() - self._self_at_start
        report["benchCpuSeconds"] = round(known, 1)
        for name, tracked in self._groups.items():
            baseline = tracked.baseline or {}
            used = sum(t - baseline.get(pid, 0) for pid, t in tracked.ticks.items())
            tracked.usage.cpu_seconds = used / TICKS
            known += tracked.usage.cpu_seconds
            report[name] = _usage_dict(tracked)
        report["otherCpuSeconds"] = round(max(0.0, busy - known), 1)
        return report

    def _run(self) -> None:
        while not self._stopping.is_set():
            for tracked in self._groups.values():
                pgid = tracked.group()
                if pgid is not None:
                    self._sample(tracked, pgid)
            self._stopping.wait(self._interval)

    def _sample(self, tracked: _Tracked, pgid: int) -> None:
        members = group_members(pgid)
        if tracked.baseline is None:
            tracked.baseline = dict(members)
        tracked.ticks.update(members)
        usage = tracked.usage
        usage.processes = max(usage.processes, len(members))
        if not tracked.memory:
            return
        rss = pss = 0
        for pid in members:
            one_rss, one_pss = _memory_kib(pid)
            rss += one_rss
            pss += one_pss
        usage.rss_kib = max(usage.rss_kib, rss)
        usage.pss_kib = max(usage.pss_kib, pss)


def _usage_dict(tracked: _Tracked) -> dict[str, Any]:
    usage = tracked.usage
    out: dict[str, Any] = {"cpuSeconds": round(usage.cpu_seconds, 1),
                           "processes": usage.processes}
    if tracked.memory:
        out["peakRssMiB"] = round(usage.rss_kib / 1024, 1)
        out["peakPssMiB"] = round(usage.pss_kib / 1024, 1)
    return out
