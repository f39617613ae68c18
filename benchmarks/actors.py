"""Actor calls side by side: a bayou actor, bayou's task round trip, PPE, a Dask actor.

What a warm actor call costs, set against the figures it should be judged by,
all measured in one process, on this machine, in this run, so the ratios
compare like with like. An actor (``EnvExecutor.actor``) is one object living
in a worker process of its own; a call sends a method name and arguments to
it and brings the result back. It should cost no more than bayou's plain task
round trip (the same wire, no function to ship), and much less than a call
to a Dask actor, the nearest existing feature.

The rows (every one a sequential call on a warm worker, timed from the call
to holding the result; ``workloads.Model`` is the actor's class, defined in
``benchmarks/workloads.py`` so that every contender imports it the same way):

* ``bayou actor call``       ``a.noop().result()``, ``a = ex.actor(Model, args=(3,))``
                             of ``ex = bayou.EnvExecutor(2)`` (env=None: the caller's
                             interpreter); the actor has a process of its own
* ``bayou task round trip``  ``ex.submit(noop).result()``, the same executor
* ``PPE round trip``         ``ProcessPoolExecutor(1, mp_context=spawn)``'s
                             ``submit(noop).result()``: the usual reference
* ``Dask actor call``        ``proxy.noop().result()``, ``proxy =
                             client.submit(Model, 3, actor=True).result()`` on a
                             ``LocalCluster(n_workers=1, threads_per_worker=1,
                             processes=True)``; skipped, with a note, without
                             ``distributed``
* ``bayou actor call, Python X.Y`` / ``bayou task round trip, Python X.Y``: the same
                             two calls with ``EnvExecutor(1, env=Env.existing(python))``
                             of another interpreter: Python 3.9 if one is found, else
                             the newest other X.Y (>= 3.8), from ``$PYENV_ROOT``,
                             ``pyenv root`` and ``~/.pyenv`` (``versions/*/bin/python3.X``),
                             or ``--other-python PATH``; skipped, with a note, if none

Method: every contender is started, checked (the actor's calls run in its own
process: not the caller, not a task worker; the Dask actor in the Dask worker;
the other-Python actor reports that Python) and warmed up before anything is
timed. Then ``--rounds`` rounds (60; ``--quick``: 3): in each, every contender
makes 20 untimed calls and then ``--calls`` (300; ``--quick``: 100) timed ones,
one after another; the order of the contenders rotates by one each round, so
drift on a busy machine hits every row alike. Turns are short and rounds many
on purpose: on a shared 2-core VM the sequential round trip flips between two
levels (about 70 and 160 µs for bayou) for stretches of a second or so,
whenever the caller and its worker stop getting a core each, and long turns
would hand one row more of the slow stretches than another.

A row's median and p90 are over all its timed calls; "round medians" is the
spread of its per-round medians: the low end is the row on a quiet machine,
the high end the contended level, and on a two-level machine the overall
median lands wherever the share of slow rounds puts it. A ratio is one row's
median over another's ("median / median"); "per round" is the same ratio
computed within each round, where the two rows ran moments apart (paired), as
the median and the range over rounds; when the two columns disagree, the
machine drifted during the run. The line under the table checks the actor
feature's acceptance goals on the medians: the bayou actor call at most
100 µs, and at most 1.00x bayou's task round trip. The figures are for
sequential use: bayou polls for up to 100 µs before sleeping, in the caller
and in the worker (``BAYOU_SPIN_US=0`` turns it off, to see what the polling
adds; on this VM both bayou rows then sit at about 100 µs, without the two
levels).

"actor start" under the table is one sample per actor, not a median: from
the constructor call to the first method result, the executor already up.

This module imports only the stdlib (and ``benchmarks.workloads``) at top
level: the spawned PPE worker re-imports it and should not pay for bayou or
Dask. The exit status is 1 if any bayou measurement failed.

    .venv/bin/python benchmarks/actors.py                 # full run, about a minute on 2 cores
    .venv/bin/python benchmarks/actors.py --quick         # CI smoke, a few seconds
    .venv/bin/python benchmarks/actors.py --rounds 10 --calls 1000 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import glob
import json
import multiprocessing
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import workloads  # noqa: E402

TIMEOUT = 300.0  # seconds for any single call: a hang fails the run, it does not stall CI
ROUND_WARMUP = 20  # untimed calls at the start of each contender's turn in a round
PREFERRED_OTHER = (3, 9)
GOAL_ACTOR_US = 100.0  # the bayou actor call's median, at most
GOAL_ACTOR_OVER_TASK = 1.0  # ... and at most this times bayou's task round trip


@dataclass
class Contender:
    """One row: how to make one call, and the times of the calls made."""

    key: str  # JSON key
    label: str  # row label
    timed: str  # what one sample is
    bayou: bool = False  # a failure fails the run
    call: Callable[[], Any] | None = None
    rounds: list[list[float]] = field(default_factory=list)  # seconds, per round
    failed: str | None = None

    @property
    def samples(self) -> list[float]:
        return [t for r in self.rounds for t in r]

    def median(self) -> float | None:
        samples = self.samples
        return statistics.median(samples) if samples else None


@dataclass(frozen=True)
class Ratio:
    label: str
    num: str  # contender keys
    den: str
    goal: float | None = None  # at most


RATIOS = [
    Ratio("bayou actor / bayou task", "bayou_actor", "bayou_task", GOAL_ACTOR_OVER_TASK),
    Ratio("bayou actor / PPE", "bayou_actor", "ppe"),
    Ratio("Dask actor / bayou actor", "dask_actor", "bayou_actor"),
    Ratio("bayou actor, other Python / bayou actor", "other_actor", "bayou_actor"),
    Ratio("bayou actor / bayou task, other Python", "other_actor", "other_task"),
]


class Run:
    def __init__(self) -> None:
        self.contenders: list[Contender] = []
        self.notes: list[str] = []
        self.starts: dict[str, float] = {}  # actor start, seconds, one sample
        self.info: dict[str, Any] = {}

    def by_key(self) -> dict[str, Contender]:
        return {c.key: c for c in self.contenders}

    def fail(self, c: Contender, what: str, exc: BaseException) -> None:
        c.failed = f"{what}: {type(exc).__name__}: {exc}"
        self.notes.append(f"{c.label} failed ({c.failed})")
        traceback.print_exc(file=sys.stderr)


# -- finding another Python -----------------------------------------------------------


def _pyenv_roots() -> list[str]:
    roots = [os.environ.get("PYENV_ROOT", "")]
    pyenv = shutil.which("pyenv")
    if pyenv:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=30)
            roots.append(out.stdout.strip() if out.returncode == 0 else "")
    roots.append(os.path.expanduser("~/.pyenv"))
    return [r for r in dict.fromkeys(roots) if r and os.path.isdir(r)]


def _version(python: str) -> tuple[int, int] | None:
    code = "import sys; print(*sys.version_info[:2])"
    with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
        out = subprocess.run(
            [python, "-I", "-c", code], capture_output=True, text=True, timeout=30
        )
        if out.returncode == 0:
            major, minor = (int(x) for x in out.stdout.split())
            return major, minor
    return None


def other_python() -> tuple[str, tuple[int, int]] | None:
    """A CPython of another X.Y than ours, >= 3.8: 3.9 if there is one, else the newest."""
    found: dict[tuple[int, int], str] = {}
    for root in _pyenv_roots():
        for path in sorted(glob.glob(os.path.join(root, "versions", "*", "bin", "python3.*"))):
            if not re.fullmatch(r"python3\.\d+", os.path.basename(path)):
                continue
            version = _version(path)
            if version and version >= (3, 8) and version != sys.version_info[:2]:
                found.setdefault(version, path)
    if not found:
        return None
    best = PREFERRED_OTHER if PREFERRED_OTHER in found else max(found)
    return found[best], best


# -- starting the contenders ----------------------------------------------------------


def _timed_start(run: Run, name: str, make: Callable[[], Any], first: Callable[[Any], Any]) -> Any:
    t0 = time.perf_counter()
    handle = make()
    first(handle)
    run.starts[name] = time.perf_counter() - t0
    return handle


def start_bayou(run: Run, stack: contextlib.ExitStack) -> None:
    import bayou

    actor_row = Contender("bayou_actor", "bayou actor call", "`a.noop().result()`", bayou=True)
    task_row = Contender("bayou_task", "bayou task round trip", "`ex.submit(noop).result()`", True)
    run.contenders += [actor_row, task_row]
    try:
        ex = stack.enter_context(bayou.EnvExecutor(2))
        task_pids = _task_workers(ex, 2)
        actor = _timed_start(
            run,
            "bayou actor",
            lambda: ex.actor(workloads.Model, args=(3,)),
            lambda a: a.noop().result(timeout=TIMEOUT),
        )
        stack.callback(actor.close)
        _check_bayou_actor(actor, task_pids)
    except Exception as exc:
        run.fail(actor_row, "start", exc)
        run.fail(task_row, "start", exc)
        return
    noop = workloads.noop
    actor_row.call = lambda: actor.noop().result(timeout=TIMEOUT)
    task_row.call = lambda: ex.submit(noop).result(timeout=TIMEOUT)


def _task_workers(ex: Any, n: int) -> set[int]:
    """The pids of the executor's task workers (both busy at once, so each runs one)."""
    pids: set[int] = set()
    for _ in range(20):
        futures = [ex.submit(workloads.sleep_stamp, 0.05) for _ in range(n)]
        pids |= {f.result(timeout=TIMEOUT)[0] for f in futures}
        if len(pids) == n:
            break
    return pids


def _check_bayou_actor(actor: Any, task_pids: set[int], python: str | None = None) -> None:
    """Its calls run in its own process, on its own object, in the expected Python."""
    answer = actor.predict(2).result(timeout=TIMEOUT)
    pid = actor.getpid().result(timeout=TIMEOUT)
    if answer != 6:
        raise RuntimeError(f"actor's predict(2) gave {answer!r}, not 6")
    if pid != actor.pid or pid == os.getpid() or pid in task_pids:
        raise RuntimeError(
            f"actor's calls ran in {pid} (actor.pid {actor.pid}, caller {os.getpid()}, "
            f"task workers {sorted(task_pids)})"
        )
    if python is not None and actor.python().result(timeout=TIMEOUT) != python:
        raise RuntimeError(f"actor runs Python {actor.python().result()}, not {python}")


def start_ppe(run: Run, stack: contextlib.ExitStack) -> None:
    row = Contender("ppe", "PPE round trip", "`ProcessPoolExecutor(1)`: `submit(noop).result()`")
    run.contenders.append(row)
    try:
        ppe = stack.enter_context(
            ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        )
        ppe.submit(workloads.noop).result(timeout=TIMEOUT)
    except Exception as exc:
        run.fail(row, "start", exc)
        return
    noop = workloads.noop
    row.call = lambda: ppe.submit(noop).result(timeout=TIMEOUT)


def start_dask(run: Run, stack: contextlib.ExitStack) -> None:
    try:
        import distributed
        from distributed import Client, LocalCluster
    except ImportError as exc:
        run.notes.append(f"Dask actor skipped: distributed is not importable ({exc})")
        return
    row = Contender("dask_actor", "Dask actor call", "`proxy.noop().result()`")
    run.contenders.append(row)
    run.info["distributed"] = distributed.__version__
    try:
        cluster = stack.enter_context(
            LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
        )
        client = stack.enter_context(Client(cluster))
        (worker_pid,) = client.run(os.getpid).values()
        proxy = _timed_start(
            run,
            "Dask actor",
            lambda: client.submit(workloads.Model, 3, actor=True).result(timeout=TIMEOUT),
            lambda p: p.noop().result(timeout=TIMEOUT),
        )
        pid = proxy.getpid().result(timeout=TIMEOUT)
        if pid != worker_pid:
            raise RuntimeError(f"Dask actor ran in {pid}, the Dask worker is {worker_pid}")
    except Exception as exc:
        run.fail(row, "start", exc)
        return
    row.call = lambda: proxy.noop().result(timeout=TIMEOUT)


def start_other(run: Run, stack: contextlib.ExitStack, given: str | None) -> None:
    if given:
        version = _version(given)
        if version is None:
            run.notes.append(f"other Python skipped: {given} does not run")
            return
        found: tuple[str, tuple[int, int]] | None = (given, version)
    else:
        found = other_python()
    if found is None:
        run.notes.append(
            "other Python skipped: no CPython >= 3.8 of another X.Y than "
            f"{sys.version_info[0]}.{sys.version_info[1]} under the pyenv root"
        )
        return
    import bayou

    python, version = found
    xy = f"{version[0]}.{version[1]}"
    run.info["other_python"] = {"path": python, "version": xy}
    actor_row = Contender(
        "other_actor", f"bayou actor call, Python {xy}", "`a.noop().result()`", bayou=True
    )
    task_row = Contender(
        "other_task", f"bayou task round trip, Python {xy}", "`ex.submit(noop).result()`", True
    )
    run.contenders += [actor_row, task_row]
    try:
        ex = stack.enter_context(bayou.EnvExecutor(1, env=bayou.Env.existing(python)))
        task_pids = _task_workers(ex, 1)
        actor = _timed_start(
            run,
            f"bayou actor, Python {xy}",
            lambda: ex.actor(workloads.Model, args=(3,)),
            lambda a: a.noop().result(timeout=TIMEOUT),
        )
        stack.callback(actor.close)
        _check_bayou_actor(actor, task_pids, python=xy)
    except Exception as exc:
        run.fail(actor_row, "start", exc)
        run.fail(task_row, "start", exc)
        return
    noop = workloads.noop
    actor_row.call = lambda: actor.noop().result(timeout=TIMEOUT)
    task_row.call = lambda: ex.submit(noop).result(timeout=TIMEOUT)


# -- measuring -----------------------------------------------------------------------


def measure(run: Run, rounds: int, calls: int, warmup: int) -> None:
    live = [c for c in run.contenders if c.failed is None]
    for c in live:
        _guarded(run, c, "warm-up", functools.partial(_repeat, c.call, warmup))
    clock = time.perf_counter
    for r in range(rounds):
        live = [c for c in run.contenders if c.failed is None]
        if not live:
            return
        k = r % len(live)
        for c in live[k:] + live[:k]:
            call = c.call
            assert call is not None

            def turn(c: Contender = c, call: Callable[[], Any] = call) -> None:
                gc.collect()  # first: a pause would let the worker fall asleep
                _repeat(call, ROUND_WARMUP)
                times = []
                for _ in range(calls):
                    t0 = clock()
                    call()
                    times.append(clock() - t0)
                c.rounds.append(times)

            _guarded(run, c, f"round {r + 1}", turn)
        _progress(f"round {r + 1}/{rounds}")


def _repeat(call: Callable[[], Any] | None, n: int) -> None:
    assert call is not None
    for _ in range(n):
        call()


def _guarded(run: Run, c: Contender, what: str, fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception as exc:
        run.fail(c, what, exc)


def _progress(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


# -- reporting -----------------------------------------------------------------------


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


def ratio_of(run: Run, ratio: Ratio) -> tuple[float, list[float]] | None:
    """(median over median, [the same ratio within each round])."""
    by_key = run.by_key()
    num, den = by_key.get(ratio.num), by_key.get(ratio.den)
    if num is None or den is None or not num.samples or not den.samples:
        return None
    per_round = [
        statistics.median(a) / statistics.median(b)
        # round i of both; a row that failed stops early, so zip stops with it
        for a, b in zip(num.rounds, den.rounds, strict=False)
        if a and b
    ]
    return num.median() / den.median(), per_round  # type: ignore[operator]


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f}"


def tables(run: Run) -> str:
    lines = [
        "| row | what is timed | median µs | p90 µs | round medians µs |",
        "|---|---|--:|--:|--:|",
    ]
    for c in run.contenders:
        samples = c.samples
        if not samples:
            lines.append(f"| {c.label} | {c.timed} | failed | failed | - |")
            continue
        medians = [statistics.median(r) for r in c.rounds]
        spread = f"{_us(min(medians))}–{_us(max(medians))}"
        lines.append(
            f"| {c.label} | {c.timed} | {_us(statistics.median(samples))} "
            f"| {_us(p90(samples))} | {spread} |"
        )
    lines += [
        "",
        "| ratio | median / median | per round: median (min–max) | goal |",
        "|---|--:|--:|--:|",
    ]
    for ratio in RATIOS:
        got = ratio_of(run, ratio)
        if got is None:
            continue
        value, per_round = got
        paired = (
            f"{statistics.median(per_round):.2f} ({min(per_round):.2f}–{max(per_round):.2f})"
            if per_round
            else "-"
        )
        goal = f"≤ {ratio.goal:.2f}" if ratio.goal is not None else ""
        label = ratio.label.replace("other Python", _other_label(run))
        lines.append(f"| {label} | {value:.2f} | {paired} | {goal} |")
    return "\n".join(lines)


def _other_label(run: Run) -> str:
    other = run.info.get("other_python")
    return f"Python {other['version']}" if other else "other Python"


def verdict(run: Run) -> str:
    actor = run.by_key().get("bayou_actor")
    median = actor.median() if actor else None
    if median is None:
        return "goals: bayou actor call not measured: GOAL MISSED"
    over = ratio_of(run, RATIOS[0])
    parts = [f"median {median * 1e6:.0f} µs (goal ≤ {GOAL_ACTOR_US:.0f} µs)"]
    met = median * 1e6 <= GOAL_ACTOR_US
    if over is None:
        parts.append("bayou task round trip not measured")
        met = False
    else:
        parts.append(
            f"{over[0]:.2f}x bayou's task round trip (goal ≤ {GOAL_ACTOR_OVER_TASK:.2f}x)"
        )
        met = met and over[0] <= GOAL_ACTOR_OVER_TASK
    return f"bayou actor call: {', '.join(parts)}: {'goals met' if met else 'GOAL MISSED'}"


def report(run: Run, args: argparse.Namespace, runtime: float) -> dict[str, Any]:
    rows = {}
    for c in run.contenders:
        samples = c.samples
        rows[c.key] = {
            "label": c.label,
            "timed": c.timed,
            "calls": len(samples),
            "median_s": statistics.median(samples) if samples else None,
            "p90_s": p90(samples) if samples else None,
            "round_medians_s": [statistics.median(r) for r in c.rounds],
            "failed": c.failed,
        }
    ratios = {}
    for ratio in RATIOS:
        got = ratio_of(run, ratio)
        if got is not None:
            ratios[f"{ratio.num}/{ratio.den}"] = {
                "label": ratio.label,
                "value": got[0],
                "per_round": got[1],
                "per_round_median": statistics.median(got[1]) if got[1] else None,
                "goal_at_most": ratio.goal,
            }
    return {
        "mode": "quick" if args.quick else "full",
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "rounds": args.rounds,
        "calls_per_round": args.calls,
        "runtime_s": runtime,
        "rows": rows,
        "ratios": ratios,
        "actor_start_s": run.starts,
        "goals": {
            "actor_median_us_at_most": GOAL_ACTOR_US,
            "actor_over_task": GOAL_ACTOR_OVER_TASK,
        },
        "verdict": verdict(run),
        "info": run.info,
        "notes": run.notes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few rounds and calls (CI smoke)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (60; --quick: 3)")
    parser.add_argument(
        "--calls", type=int, default=None, help="timed calls per contender per round (300; 100)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--other-python", metavar="PATH", help="the other interpreter (default: discovered)"
    )
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 60)
    args.calls = args.calls or (100 if args.quick else 300)
    warmup = 50 if args.quick else 300

    started = time.perf_counter()
    run = Run()
    with contextlib.ExitStack() as stack:
        _progress("starting bayou, PPE, Dask, the other Python")
        start_bayou(run, stack)
        start_ppe(run, stack)
        start_dask(run, stack)
        start_other(run, stack, args.other_python)
        measure(run, args.rounds, args.calls, warmup)
        _progress("shutting down")
    runtime = time.perf_counter() - started

    mode = "quick" if args.quick else "full"
    print(
        f"\nActor calls side by side ({mode} run: {args.rounds} rounds x {args.calls} calls; "
        f"Python {sys.version.split()[0]}, {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs)\n"
    )
    print(tables(run))
    print(f"\n{verdict(run)}")
    if run.starts:
        starts = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in run.starts.items())
        print(f"actor start (constructor to first result, one sample): {starts}")
    for note in run.notes:
        print(f"note: {note}")
    print(f"\nruntime {runtime:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(report(run, args, runtime), indent=1))
    return 1 if any(c.failed for c in run.contenders if c.bayou) else 0


if __name__ == "__main__":
    sys.exit(main())
