"""``bayou workers``, ``bayou debug`` and ``bayou logs``: the runtime side of the CLI.

`bayou.cli` builds its parser and calls `add_parsers` to register these;
each ``cmd_*`` returns the exit code (after printing the error: 2 bad usage,
3 nothing found), like the other subcommands.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .. import debugging, logs
from ..store import Store
from . import client, registry


def add_parsers(commands) -> None:
    """Register the subcommands on the ``bayou`` parser's subparsers."""
    workers = commands.add_parser("workers", help="list and stop persistent pools")
    sub = workers.add_subparsers(title="workers commands", metavar="ACTION")
    workers.set_defaults(func=lambda a: (workers.print_help(), 2)[1])
    listing = sub.add_parser("list", help="running persistent pools (dead ones are pruned)")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=cmd_workers_list)
    stopping = sub.add_parser("stop", help="stop persistent pools and their workers")
    stopping.add_argument("names", nargs="+", metavar="NAME")
    stopping.add_argument(
        "--timeout", type=float, default=30.0, help="seconds before the host is killed"
    )
    stopping.set_defaults(func=cmd_workers_stop)

    debug = commands.add_parser(
        "debug", help="write a VS Code launch.json to attach to debug workers"
    )
    debug.add_argument("name", nargs="?", help="pool name (without: list debuggable pools)")
    debug.add_argument(
        "-o",
        "--output",
        default=".vscode/launch.json",
        help="file to write or update (default: .vscode/launch.json; '-': print)",
    )
    debug.set_defaults(func=cmd_debug)

    logs_cmd = commands.add_parser("logs", help="show a named pool's manager and worker logs")
    logs_cmd.add_argument("name", nargs="?", help="pool name (without: list pools with logs)")
    logs_cmd.add_argument("-n", "--lines", type=int, default=40, help="lines per file")
    logs_cmd.add_argument("--worker", type=int, metavar="PID", help="only this worker's log")
    logs_cmd.add_argument("--manager", action="store_true", help="only the manager log")
    logs_cmd.add_argument("--path", action="store_true", help="print the log directory")
    logs_cmd.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing new lines, also of workers started later (Ctrl-C ends)",
    )
    logs_cmd.set_defaults(func=cmd_logs)


def _store_of(args: argparse.Namespace) -> Store:
    """The store of ``bayou --store DIR``, else the default one."""
    return Store(args.store) if getattr(args, "store", None) else Store()


def _fail(message: str, code: int) -> int:
    """Report like `bayou.cli.main` does and return the exit code (no exception: under
    ``python -m bayou.cli`` the CLI's own CliError is ``__main__.CliError``)."""
    print(f"bayou: {message}", file=sys.stderr)
    return code


def _uptime(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


# -- workers ----------------------------------------------------------------------------


def cmd_workers_list(args: argparse.Namespace) -> int:
    pools = client.list_pools(_store_of(args))
    if args.json:
        rows = [dict(p.data, uptime=p.uptime) for p in pools]
        print(json.dumps(rows, indent=1, sort_keys=True))
        return 0
    if not pools:
        print("no persistent pools (start one with EnvExecutor(..., persistent=True, name=...))")
        return 0
    print(
        f"{'NAME':<16}  {'ENV':<14}  {'PYTHON':<8}  {'HOST':>7}  {'UPTIME':>7}  {'TASKS':>6}  PIDS"
    )
    for p in pools:
        d = p.data
        env = d.get("env_name") or str(d.get("env_hash", "?"))[:12]
        pids = ",".join(map(str, p.worker_pids)) or "-"
        flag = " (debug)" if d.get("debug") else ""
        print(
            f"{p.name[:16]:<16}  {env[:14]:<14}  {d.get('python_version', '?'):<8}  "
            f"{p.host_pid:>7}  {_uptime(p.uptime):>7}  {d.get('tasks_served', 0):>6}  "
            f"{pids}{flag}"
        )
        for a in d.get("actors", ()):
            state = "" if a.get("alive", True) else " (dead)"
            print(
                f"  actor {str(a.get('name'))[:20]:<20}  {str(a.get('class'))[:24]:<24}  "
                f"pid {a.get('pid') or '-':>7}  calls {a.get('calls', 0):>7}  "
                f"restarts {a.get('restarts', 0):>3}  rss {_mib(a.get('rss') or 0)}{state}"
            )
    return 0


def _mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


def cmd_workers_stop(args: argparse.Namespace) -> int:
    store = _store_of(args)
    code = 0
    for name in args.names:
        try:
            entry = client.stop(name, store=store, timeout=args.timeout)
        except registry.PoolNotFoundError as exc:
            print(f"bayou: {exc}", file=sys.stderr)
            code = 3
            continue
        except ValueError as exc:
            return _fail(str(exc), 2)
        print(
            f"stopped {name} (host pid {entry.host_pid}, {entry.data.get('tasks_served', 0)} tasks)"
        )
    return code


# -- debug ------------------------------------------------------------------------------


def cmd_debug(args: argparse.Namespace) -> int:
    store = _store_of(args)
    targets = debugging.targets(store)
    if args.name is None:
        if not targets:
            print("no debug workers (start an executor with debug=True)")
            return 0
        for debug_id, listening in targets.items():
            ports = ", ".join(f"pid {w['pid']} on {w['host']}:{w['port']}" for w in listening)
            print(f"{debug_id}: {ports}")
        return 0
    workers = targets.get(args.name)
    if not workers:
        known = ", ".join(targets) or "none"
        return _fail(
            f"no listening debug workers for {args.name!r} (debuggable: {known}); start the "
            f"executor with debug=True, name={args.name!r} and submit a task first",
            3,
        )
    if args.output == "-":
        print(json.dumps(debugging.launch_configurations(args.name, workers), indent=4))
        return 0
    try:
        path = debugging.write_launch_json(Path(args.output), args.name, workers)
    except ValueError as exc:
        return _fail(str(exc), 2)
    print(f"wrote {len(workers)} attach configuration(s) for {args.name} to {path}")
    return 0


# -- logs -------------------------------------------------------------------------------


def cmd_logs(args: argparse.Namespace) -> int:
    store = _store_of(args)
    if args.name is None:
        names = logs.named_pools(store)
        if not names:
            print("no pool logs (pools get logs under the store when they have a name)")
            return 0
        live = {p.name for p in client.list_pools(store)}
        print(f"{'NAME':<16}  {'STATE':<8}  {'MANAGER':>8}  {'WORKERS':>7}  LAST WRITE")
        for name in names:
            directory = logs.pools_log_dir(store) / name
            manager = directory / logs.MANAGER_LOG
            size = manager.stat().st_size if manager.exists() else 0
            files = [manager, *logs.worker_logs(directory)]
            last = max((f.stat().st_mtime for f in files if f.exists()), default=0)
            stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(last)) if last else "-"
            state = "running" if name in live else "-"
            print(
                f"{name[:16]:<16}  {state:<8}  {size:>8}  "
                f"{len(logs.worker_logs(directory)):>7}  {stamp}"
            )
        return 0
    try:
        registry.check_name(args.name)
    except ValueError as exc:
        return _fail(str(exc), 2)
    directory = logs.pools_log_dir(store) / args.name
    if not directory.is_dir():
        return _fail(f"no logs for {args.name!r} under {logs.pools_log_dir(store)}", 3)
    if args.path:
        print(directory)
        return 0

    def selected(newest_first: bool = True) -> list[Path]:
        sections: list[Path] = []
        if args.worker is None:
            sections.append(directory / logs.MANAGER_LOG)
        if not args.manager:
            workers = logs.worker_logs(directory)  # oldest first
            if newest_first:
                workers.reverse()
            if args.worker is not None:
                workers = [w for w in workers if logs.worker_pid(w) == args.worker]
            sections += workers
        return sections

    sections = selected()
    if args.worker is not None and not sections:
        return _fail(f"no log of a worker with pid {args.worker} for {args.name!r}", 3)
    # following reads the files oldest first: a replaced worker's last lines come
    # before its successor's first ones
    follower = logs.LogFollower(lambda: selected(newest_first=False)) if args.follow else None
    for path in sections:
        print(f"==> {path} <==")
        for line in logs.tail(path, args.lines):
            print(line)
    if follower is not None:
        sys.stdout.flush()  # the tails, before waiting: a pipe would keep them back
        return _follow(follower)
    return 0


def _follow(follower: logs.LogFollower, interval: float = 0.25) -> int:
    """Print what the followed logs gain, each line after its file's short name."""
    try:
        while True:
            for path, line in follower.poll():
                label = path.name.split(".", 1)[0]
                print(f"{label} | {line}", flush=True)
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
