"""mailcarrier as an SMTP relay against Postfix, on this one machine.

Run from the repository root::

    .venv/bin/python -m bench.relay            # or: make bench
    .venv/bin/python -m bench.relay --messages 500 --skip-backlog --json

Every run sends the same load with Postfix's ``smtp-source`` (``-s``
parallel sessions, ``-m`` messages of ``-l`` bytes of body, a new
connection per message) to a server that relays it to Postfix's
``smtp-sink`` on another loopback port:

ceiling
    smtp-source straight into smtp-sink: what the tools and the loopback
    can do here, the most any relay could reach.
mailcarrier
    ``mailcarrier serve`` with an empty queue (DKIM signing on, as by
    default).
postfix
    a private Postfix instance configured as a plain relay.
mailcarrier-backlog
    mailcarrier again, on a data folder whose queue already holds
    ``--backlog`` messages that are not due for a day.
mailcarrier-submission-only (with ``--diagnose``)
    ``serve --roles submission``: acceptance alone, nothing delivered, to
    tell the cost of accepting from the cost of delivering.

For each run two rates are reported: *accepted* (messages smtp-source
got a 250 for, over smtp-source's own wall time) and *end to end* (from
the start of smtp-source until the last message reached the sink). For
the servers also their peak memory (summed over their processes), the
CPU they used per message, and the share of the machine's CPU that went
to processes outside the benchmark while it ran (a sign the numbers were
disturbed). The accept rate with the deep queue is compared with the
accept rate of the ``mailcarrier`` run, the same set-up with an empty
queue.

Each run's logs and the results (``result.json``) are kept in
``bench/out/<timestamp>/``; the data folders are removed unless
``--keep`` is given. Only 127.0.0.1 is ever contacted, and every wait has
a deadline.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from bench import backlog
from bench.postfix import Load, PostfixRelay, Sink, Tools, ensure_tools, start_source
from bench.procs import (
    TICKS,
    BenchError,
    CountingProcess,
    GroupSampler,
    free_port,
    machine_busy_ticks,
)
from bench.service import Mailcarrier

BENCH_DIR = Path(__file__).resolve().parent
RECIPIENT = "rcpt@some.test"
FALLBACK_SENDER = "bench@sender.test"
ACCEPT_TOLERANCE = 0.20  # accept rates with and without a deep queue: this close
SETTLE_SECONDS = 1.0  # after the last message, how long to watch for extras

err = Console(stderr=True)
PROGRESS_COLUMNS = (TextColumn("{task.description:<32}"), BarColumn(),
                    MofNCompleteColumn(), TaskProgressColumn(), TimeElapsedColumn())


@dataclass(frozen=True)
class Options:
    messages: int
    sessions: int
    size: int
    workers: int | None
    backlog: int
    concurrency: int
    timeout: float
    stall: float
    quiet_wait: float
    skip_postfix: bool
    skip_backlog: bool
    skip_ceiling: bool
    diagnose: bool
    keep: bool
    as_json: bool
    out: Path


def parse(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.relay",
        description="mailcarrier vs Postfix as an SMTP relay, end to end.",
    )
    parser.add_argument("--messages", type=int, default=20000,
                        help="messages per run (smtp-source -m; default 20000)")
    parser.add_argument("--sessions", type=int, default=20,
                        help="parallel SMTP sessions (smtp-source -s; default 20)")
    parser.add_argument("--size", type=int, default=4096,
                        help="body bytes per message (smtp-source -l; default 4096)")
    parser.add_argument("--workers", type=int, default=None,
                        help="mailcarrier worker processes (default: its own, "
                             "one per CPU)")
    parser.add_argument("--backlog", type=int, default=100000,
                        help="messages waiting in the queue for the backlog run "
                             "(default 100000)")
    parser.add_argument("--concurrency", type=int, default=20,
                        help="Postfix default_destination_concurrency_limit "
                             "(default 20, as mailcarrier's per-destination limit)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds one run may take (default 60 + messages/20)")
    parser.add_argument("--stall", type=float, default=180.0,
                        help="give a run up when the sink got nothing new for "
                             "this many seconds after the load ended (default 180)")
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="before each run, wait up to this many seconds for "
                             "other work on the machine to calm down (default 60)")
    parser.add_argument("--skip-postfix", action="store_true",
                        help="do not run Postfix")
    parser.add_argument("--skip-backlog", action="store_true",
                        help="do not run mailcarrier with a deep queue")
    parser.add_argument("--skip-ceiling", action="store_true",
                        help="do not measure smtp-source straight into smtp-sink")
    parser.add_argument("--diagnose", action="store_true",
                        help="also run mailcarrier with the submission role only "
                             "(acceptance without delivery in the same processes)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the data folders and the Postfix instance")
    parser.add_argument("--json", dest="as_json", action="store_true",
                        help="print the results as JSON on stdout")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for logs and results "
                             "(default bench/out/<timestamp>)")
    args = parser.parse_args(argv)
    for name in ("messages", "sessions", "size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.backlog < 0 or (args.workers is not None and args.workers < 0):
        parser.error("--backlog and --workers cannot be negative")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Options(
        messages=args.messages, sessions=args.sessions, size=args.size,
        workers=args.workers, backlog=args.backlog, concurrency=args.concurrency,
        timeout=args.timeout or 60 + args.messages / 20, stall=args.stall,
        quiet_wait=args.quiet_wait,
        skip_postfix=args.skip_postfix, skip_backlog=args.skip_backlog,
        skip_ceiling=args.skip_ceiling, diagnose=args.diagnose, keep=args.keep,
        as_json=args.as_json,
        out=(args.out or BENCH_DIR / "out" / stamp).resolve(),
    )


# One measured run --------------------------------------------------------------


def _rate(count: int, seconds: float | None) -> float | None:
    if not seconds or seconds <= 0:
        return None
    return round(count / seconds, 1)


def _outcome(source: CountingProcess, sink: Sink, *, deadline: float,
             stall: float, server_alive: Callable[[], bool] | None,
             delivers: bool) -> str | None:
    """Why the run is over (None: still going); "" means it completed."""
    now = time.monotonic()
    arrived = sink.counter.reached_at is not None or not delivers
    if arrived and source.exited_at is not None and source.returncode == 0:
        return ""
    if now > deadline:
        return "timeout"
    if server_alive is not None and not server_alive():
        return "the server under test exited"
    if source.exited_at is None:
        return None
    quiet = now - max(source.exited_at, sink.counter.changed_at)
    if source.returncode != 0:
        # The load broke off: wait only for what was accepted to arrive.
        if sink.received >= source.count or quiet > 15:
            return f"smtp-source failed (exit {source.returncode})"
        return None
    if quiet > stall:
        return f"stalled: nothing reached the sink for {stall:.0f}s"
    return None


@dataclass(frozen=True)
class Target:
    """The server a run sends to: its port, liveness and process group."""

    port: int
    alive: Callable[[], bool] | None = None
    group: Callable[[], int | None] | None = None
    delivers: bool = True  # False: only acceptance is measured


def measure(name: str, tools: Tools, load: Load, target: Target, sink: Sink, *,
            opts: Options) -> dict[str, Any]:
    """Send the load to the target; follow it to the sink; return the numbers."""
    wait_for_quiet(opts.quiet_wait)
    base = sink.received
    load_before = os.getloadavg()[0]
    sink.counter.expect(base + load.messages)
    sampler = GroupSampler()
    if target.group is not None:
        sampler.watch("server", target.group, memory=True)
    sampler.watch("sink", lambda: sink.counter.process.pid)
    source = start_source(tools, load, target.port)
    sampler.watch("source", lambda: source.process.pid if source.alive() else None)
    sampler.start()
    try:
        outcome = _follow(name, source, sink, load, base, target, opts)
        if outcome == "":
            time.sleep(SETTLE_SECONDS)
    finally:
        usage = sampler.stop()
        source.stop()
    result = _numbers(source, sink, load, base=base, outcome=outcome)
    result["loadAverageBefore"] = round(load_before, 2)
    result["usage"] = usage
    return result


def _follow(name: str, source: CountingProcess, sink: Sink, load: Load, base: int,
            target: Target, opts: Options) -> str:
    """Show the progress until the run is over; return how it ended."""
    deadline = source.started_at + opts.timeout
    with Progress(*PROGRESS_COLUMNS, console=err) as progress:
        accepted = progress.add_task(f"{name}: accepted", total=load.messages)
        arrived = progress.add_task(f"{name}: at the sink", total=load.messages,
                                    visible=target.delivers)
        while True:
            progress.update(accepted, completed=source.count)
            progress.update(arrived, completed=sink.received - base)
            outcome = _outcome(source, sink, deadline=deadline, stall=opts.stall,
                               server_alive=target.alive, delivers=target.delivers)
            if outcome is not None:
                return outcome
            time.sleep(0.1)


def wait_for_quiet(limit: float, *, share: float = 0.25) -> None:
    """Wait (up to ``limit`` s) until other work leaves the CPUs mostly idle.

    Other programs on the machine (a test suite, say) slow every server
    alike only if they run all the time; a burst in one run and not the
    next skews the comparison. The busy share of every run is recorded.
    """
    deadline = time.monotonic() + limit
    cpus = os.cpu_count() or 1
    while True:
        before = machine_busy_ticks()
        time.sleep(1.0)
        busy = (machine_busy_ticks() - before) / TICKS / cpus
        if busy <= share or time.monotonic() >= deadline:
            if busy > share:
                err.print(f"[yellow]the machine is {busy:.0%} busy with other "
                          "work; measuring anyway[/yellow]")
            return


def _numbers(source: CountingProcess, sink: Sink, load: Load, *, base: int,
             outcome: str) -> dict[str, Any]:
    started = source.started_at
    accept_seconds = (source.exited_at - started) if source.exited_at else None
    e2e_seconds = (sink.counter.reached_at - started
                   if sink.counter.reached_at else None)
    delivered = sink.received - base
    result: dict[str, Any] = {
        "completed": outcome == "",
        "accepted": source.count,
        "atSink": delivered,
        "acceptSeconds": round(accept_seconds, 3) if accept_seconds else None,
        "acceptPerSecond": _rate(source.count, accept_seconds),
        "endToEndSeconds": round(e2e_seconds, 3) if e2e_seconds else None,
        "endToEndPerSecond": _rate(load.messages, e2e_seconds),
    }
    if outcome:
        elapsed = time.monotonic() - started
        result["error"] = outcome
        result["sourceExit"] = source.returncode
        result["sourceOutput"] = source.other_output[-2000:]
        result["atSinkPerSecondSoFar"] = _rate(delivered, elapsed)
    elif delivered > load.messages:
        result["extraAtSink"] = delivered - load.messages
    return result


# The runs ---------------------------------------------------------------------


def run_ceiling(tools: Tools, load: Load, opts: Options) -> dict[str, Any]:
    sink = Sink(tools, free_port())
    try:
        return measure("ceiling", tools, load, Target(sink.port), sink, opts=opts)
    finally:
        sink.close()


def run_mailcarrier(name: str, tools: Tools, opts: Options, *, waiting: int = 0,
                    roles: str = "") -> tuple[dict[str, Any], str]:
    """A fresh data folder (with ``waiting`` queued messages), then the load.

    ``roles`` other than the default run ``serve --roles``; without the
    delivery role nothing reaches the sink and only acceptance is measured.
    """
    sink = Sink(tools, free_port())
    service = Mailcarrier(opts.out / name, sink_port=sink.port, workers=opts.workers,
                          log_path=opts.out / f"{name}.log", roles=roles)
    result: dict[str, Any] = {"workers": opts.workers or "one per CPU (default)",
                              "roles": roles or "default"}
    try:
        sender = service.init()["senderAddress"]
        if waiting:
            result["backlog"] = fill_backlog(service, waiting, sender, opts)
        service.start()
        target = Target(service.port, alive=service.alive, group=service.group,
                        delivers=not roles or "delivery" in roles.split(","))
        result.update(measure(name, tools, make_load(opts, sender), target, sink,
                              opts=opts))
    finally:
        exit_code = service.stop()
        sink.close()
    result["serviceExit"] = exit_code
    result["messageStatuses"] = service.statuses()
    result["log"] = {"path": str(service.log_path), **service.log_problems()}
    return result, sender


def fill_backlog(service: Mailcarrier, count: int, sender: str,
                 opts: Options) -> dict[str, Any]:
    with Progress(*PROGRESS_COLUMNS, console=err) as progress:
        task = progress.add_task("filling the queue", total=count)
        return backlog.fill(
            service.database, count=count, sender=sender, recipient=RECIPIENT,
            size=opts.size,
            progress=lambda done: progress.update(task, completed=done),
        )


def run_postfix(tools: Tools, opts: Options, sender: str) -> dict[str, Any]:
    sink = Sink(tools, free_port())
    root = opts.out / "postfix"
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # the Postfix daemons run as the postfix user
    relay = PostfixRelay(tools, root, port=free_port(), sink_port=sink.port,
                         concurrency=opts.concurrency,
                         log_path=opts.out / "postfix.maillog")
    result: dict[str, Any] = {"concurrency": opts.concurrency}
    try:
        relay.start()
        target = Target(relay.port, alive=lambda: relay.master_pid() is not None,
                        group=relay.master_pid)
        result.update(measure("postfix", tools, make_load(opts, sender), target,
                              sink, opts=opts))
    finally:
        relay.stop()
        sink.close()
    result["log"] = {"path": str(relay.log_path), **relay.log_summary()}
    return result


def make_load(opts: Options, sender: str) -> Load:
    return Load(messages=opts.messages, sessions=opts.sessions, size=opts.size,
                sender=sender, recipient=RECIPIENT)


# Putting it together ------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    return {"cpus": os.cpu_count(), "cpuModel": model, "memoryMiB": memory,
            "kernel": platform.release(), "python": platform.python_version()}


def versions(tools: Tools) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        mailcarrier = version("mailcarrier")
    except PackageNotFoundError:
        mailcarrier = "unknown"
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        # Read-only: the tree may hold uncommitted work of others.
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                              cwd=BENCH_DIR, capture_output=True, text=True,
                              timeout=10, check=False)
        commit = done.stdout.strip() or None
    return {"mailcarrier": mailcarrier, "commit": commit, "postfix": tools.version()}


def summary(runs: dict[str, Any]) -> dict[str, Any]:
    # Only runs that completed count; a broken run's numbers stay in its own entry.
    mine, peer, deep = (
        runs.get(name, {}) if runs.get(name, {}).get("completed") else {}
        for name in ("mailcarrier", "postfix", "mailcarrier-backlog")
    )
    out: dict[str, Any] = {
        "mailcarrierPerSecond": mine.get("endToEndPerSecond"),
        "postfixPerSecond": peer.get("endToEndPerSecond"),
        "mailcarrierPeakRssMiB": _server(mine).get("peakRssMiB"),
        "mailcarrierPeakPssMiB": _server(mine).get("peakPssMiB"),
        "acceptEmptyPerSecond": mine.get("acceptPerSecond"),
        "acceptBacklogPerSecond": deep.get("acceptPerSecond"),
    }
    if out["mailcarrierPerSecond"] and out["postfixPerSecond"]:
        out["ratioToPostfix"] = round(
            out["mailcarrierPerSecond"] / out["postfixPerSecond"], 3)
    if out["acceptEmptyPerSecond"] and out["acceptBacklogPerSecond"]:
        ratio = out["acceptBacklogPerSecond"] / out["acceptEmptyPerSecond"]
        out["acceptRatio"] = round(ratio, 3)
        out["acceptWithinTolerance"] = abs(1 - ratio) <= ACCEPT_TOLERANCE
    return out


@contextlib.contextmanager
def step(runs: dict[str, Any], name: str) -> Iterator[dict[str, Any]]:
    """Record a run's result, or the error that ended it, under ``name``."""
    holder: dict[str, Any] = {}
    try:
        yield holder
    except BenchError as exc:
        holder.clear()
        holder["error"] = str(exc)
        err.print(f"[red]{name} failed:[/red] {exc}")
    except Exception as exc:  # noqa: BLE001 - recorded; the next run goes on
        holder.clear()
        holder["error"] = f"{type(exc).__name__}: {exc}"
        err.print_exception()
    runs[name] = holder


def run_all(opts: Options) -> dict[str, Any]:
    opts.out.mkdir(parents=True, exist_ok=True)
    tools = ensure_tools(err.print)
    runs: dict[str, Any] = {}
    report: dict[str, Any] = {
        "benchmark": "bench.relay",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(tools),
        "parameters": {
            "messages": opts.messages, "sessions": opts.sessions,
            "bodyBytes": opts.size, "workers": opts.workers,
            "backlog": 0 if opts.skip_backlog else opts.backlog,
            "postfixConcurrency": opts.concurrency, "timeoutSeconds": opts.timeout,
            "recipient": RECIPIENT, "connectionPerMessage": True,
        },
        "runs": runs,
        "outDir": str(opts.out),
    }
    sender = FALLBACK_SENDER
    load = make_load(opts, sender)
    if not opts.skip_ceiling:
        with step(runs, "ceiling") as result:
            result.update(run_ceiling(tools, load, opts))
        _settle()
    with step(runs, "mailcarrier") as result:
        numbers, sender = run_mailcarrier("mailcarrier", tools, opts)
        result.update(numbers)
        report["parameters"]["sender"] = sender
    _settle()
    if not opts.skip_postfix:
        with step(runs, "postfix") as result:
            result.update(run_postfix(tools, opts, sender))
        _settle()
    if not opts.skip_backlog:
        with step(runs, "mailcarrier-backlog") as result:
            numbers, _sender = run_mailcarrier("mailcarrier-backlog", tools, opts,
                                               waiting=opts.backlog)
            result.update(numbers)
    if opts.diagnose:
        _settle()
        with step(runs, "mailcarrier-submission-only") as result:
            numbers, _sender = run_mailcarrier("mailcarrier-submission-only", tools,
                                               opts, roles="submission")
            result.update(numbers)
    report["summary"] = summary(runs)
    report["ok"] = all(run.get("completed") for run in runs.values())
    return report


def _settle() -> None:
    """Let the previous run's writes reach the disk before the next starts."""
    os.sync()
    time.sleep(2)


def cleanup(opts: Options) -> None:
    if opts.keep:
        return
    for name in ("mailcarrier", "mailcarrier-backlog", "mailcarrier-submission-only",
                 "postfix"):
        shutil.rmtree(opts.out / name, ignore_errors=True)


# Showing the results -------------------------------------------------------------


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}{unit}"
    return f"{value}{unit}"


def show(report: dict[str, Any]) -> None:
    out = Console(width=None if sys.stdout.isatty() else 132)
    params = report["parameters"]
    out.print(
        f"[bold]bench.relay[/bold] {report['date']}  "
        f"{report['machine']['cpus']} CPUs ({report['machine']['cpuModel']})  "
        f"{params['messages']:,} messages of {params['bodyBytes']:,} B body, "
        f"{params['sessions']} sessions, a new connection per message"
    )
    table = Table()
    table.add_column("run", no_wrap=True)
    for header in ("accept/s", "e2e/s", "accept s", "e2e s", "RSS MiB", "PSS MiB",
                   "CPU ms/msg", "other load"):
        table.add_column(header, justify="right", no_wrap=True)
    notes = []
    for name, run in report["runs"].items():
        server = _server(run)
        table.add_row(
            name, _fmt(run.get("acceptPerSecond")), _fmt(run.get("endToEndPerSecond")),
            _fmt(run.get("acceptSeconds")), _fmt(run.get("endToEndSeconds")),
            _fmt(server.get("peakRssMiB")), _fmt(server.get("peakPssMiB")),
            _fmt(_per_message_ms(run)), _other_load(run, report["machine"]["cpus"]),
        )
        notes += [f"{name}: {note}" for note in _notes(run)]
    out.print(table)
    out.print("accept: until smtp-source got its last 250; e2e: until the last "
              "message reached the sink; RSS/PSS: peak over the server's "
              "processes; CPU: the server's, per message; other load: CPU share "
              "taken by processes outside the benchmark", style="dim")
    for note in notes:
        out.print(note, highlight=False)
    s = report["summary"]
    if s.get("ratioToPostfix") is not None:
        out.print(f"mailcarrier / Postfix end to end: [bold]{s['ratioToPostfix']:.2f}"
                  f"[/bold] ({_fmt(s['mailcarrierPerSecond'])} vs "
                  f"{_fmt(s['postfixPerSecond'])} messages/s)")
    if s.get("mailcarrierPeakRssMiB") is not None:
        out.print(f"mailcarrier peak RSS (supervisor + workers): "
                  f"{_fmt(s['mailcarrierPeakRssMiB'], ' MiB')}")
    if s.get("acceptRatio") is not None:
        verdict = "within" if s["acceptWithinTolerance"] else "NOT within"
        out.print(f"accept rate with {params['backlog']:,} queued / empty queue: "
                  f"[bold]{s['acceptRatio']:.2f}[/bold] "
                  f"({_fmt(s['acceptBacklogPerSecond'])} vs "
                  f"{_fmt(s['acceptEmptyPerSecond'])} messages/s; "
                  f"{verdict} {ACCEPT_TOLERANCE:.0%})")
    out.print(f"logs and result.json in {report['outDir']}")


def _server(run: dict[str, Any]) -> dict[str, Any]:
    return run.get("usage", {}).get("server", {})


def _per_message_ms(run: dict[str, Any]) -> float | None:
    cpu = _server(run).get("cpuSeconds")
    count = run.get("accepted")
    return 1000 * cpu / count if cpu and count else None


def _other_load(run: dict[str, Any], cpus: int | None) -> str:
    """Share of the machine's CPU that went to processes outside the bench."""
    usage = run.get("usage", {})
    wall = usage.get("wallSeconds")
    if not wall or not cpus:
        return "-"
    return f"{usage['otherCpuSeconds'] / (wall * cpus):.0%}"


def _notes(run: dict[str, Any]) -> list[str]:
    notes = []
    if run.get("error"):
        notes.append(f"[red]{run['error']}[/red]")
    if run.get("sourceOutput"):
        notes.append(f"smtp-source said: {run['sourceOutput'][-300:]}")
    if run.get("backlog"):
        fill = run["backlog"]
        notes.append(f"{fill['messages']:,} messages waiting in the queue "
                     f"(written in {fill['seconds']} s, database "
                     f"{fill['databaseMiB']} MiB)")
    if run.get("extraAtSink"):
        notes.append(f"{run['extraAtSink']} more messages than sent reached the sink")
    log = run.get("log", {})
    if log.get("problemLines"):
        notes.append(f"{log['problemLines']} problem lines in {log['path']}, first: "
                     f"{log['firstProblems'][0][:200]}")
    statuses = run.get("messageStatuses")
    if statuses:
        notes.append("messages by status afterwards: " + ", ".join(
            f"{status} {count:,}" if isinstance(count, int) else f"{status}: {count}"
            for status, count in sorted(statuses.items())))
    return notes


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt  # so SIGTERM, too, stops every server it started


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run_all(opts)
    except BenchError as exc:
        err.print(f"[red]bench.relay cannot run:[/red] {exc}")
        return 2
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/yellow]")
        return 130
    finally:
        cleanup(opts)
    (opts.out / "result.json").write_text(json.dumps(report, indent=2) + "\n")
    if opts.as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        show(report)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
