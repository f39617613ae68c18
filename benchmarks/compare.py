"""Executors side by side: ProcessPoolExecutor, bayou, bayou in envs, loky, Wetlands.

One process measures every executor on the same workloads, on this machine,
in this run, so the ratios compare like with like. The contenders:

* ``PPE``        ``concurrent.futures.ProcessPoolExecutor(2, mp_context=spawn)``
* ``bayou``      ``bayou.EnvExecutor(2)``: env=None, workers run the caller's interpreter
* ``bayou-env``  ``bayou.EnvExecutor(2, env=bayou.Env(pip=["numpy"]))``: a uv venv of the
                 caller's Python X.Y, provisioned before anything is timed (so every
                 figure is for a cached env; the constructor still does the store
                 lookup); functions travel by value with bayou's cloudpickle
* ``bayou-np1``  ``bayou.EnvExecutor(2, env=bayou.Env(python="3.9", pip=["numpy==1.23.5"]))``:
                 another Python and numpy 1.x, provisioned before timing like bayou-env
                 (skipped, with a note, when no Python 3.9 is on the machine). Functions
                 travel by reference; arrays cross between the caller's numpy 2 and
                 numpy 1.x, both ways. Its extra ratio column ``bayou-np1/bayou-env`` sets
                 it against bayou-env, a numpy 2 env: what crossing numpy (and Python)
                 versions costs. For the 100 MB round trip the goal is at most 1.2x
                 bayou-env's and at most 0.1x PPE's; the line under the table says
                 whether this run meets it
* ``bayou-persistent``  ``bayou.EnvExecutor(2, persistent=True, name=...)``: maps go
                 client -> pool host -> worker and back; back-to-back calls (the round
                 trip) go down a direct lane, client -> a worker the host lent it; cold
                 start, memory and the 100 MB row do not apply (the host's workers)
* ``loky``       ``loky.ProcessPoolExecutor(2)``, when loky is importable (else skipped)
* ``Wetlands``   a Wetlands worker pool of 2 (``environment.start(workers=2)``) over a
                 local venv (numpy) provisioned by bayou, through a pixi stand-in
                 (``benchmarks/wetlands_contender.py``), when wetlands is importable.
                 Wetlands has no ``map``: Executor's default over its submit (so the
                 chunksize rows are not measured for it), and its per-call cost makes
                 it run fewer calls (``Contender.scale``; rates and medians stay
                 comparable, see the notes of a run)

The workloads (functions in ``benchmarks/workloads.py``; 2 workers each):

1. round trip: ``submit(noop).result()`` called sequentially on warm workers;
   median and 90th percentile over all calls, in microseconds. The calls run in
   blocks of 50 (40 blocks in a full run), interleaved round-robin over the
   executors, so that the machine's drift (this VM's round trips wander by a
   factor of 1.5 within a minute) hits every column alike.
2. throughput: ``list(map(tiny, range(10_000)))`` with each executor's default
   arguments (ProcessPoolExecutor and loky: chunksize=1; bayou: automatic
   batching, with chunksize=1's semantics), with ``chunksize=1`` and with
   ``chunksize=100``; tasks per second, median over 9 interleaved repeats in a
   full run (one map's rate on this VM moves by up to 1.7x from one second to
   the next, for every executor alike).
3. numpy transfer: ``submit(identity, arr).result()`` for a 1 MB and a 100 MB
   float64 array of random bytes (both directions); seconds, median over
   repeats, after one untimed call per size (first-touch heap growth in the
   workers is not what this measures). The first timed result of each size
   is checked equal to the input.
4. cold start: time from calling the constructor until both workers have
   completed one task. Two tasks are submitted that each sleep 50 ms and
   return ``(os.getpid(), time.monotonic())``; the figure is the later of the
   two workers' first finishing stamps minus the clock read just before the
   constructor (CLOCK_MONOTONIC is one clock for all processes on Linux). No
   barrier, nothing subtracted: 50 ms is the floor. PPE may give the second
   task to the first worker while the second still boots; then more rounds
   of two tasks are submitted until the second worker reports, and its first
   stamp counts. Shutdown is not timed. Each repeat is a fresh executor.
5. idle memory: ``psutil.Process(pid).memory_full_info().uss`` of each worker
   after warm-up (both workers ran tasks, before any numpy transfer), mean per
   worker in MiB. Workers are identified by the pids the warm-up tasks return;
   for bayou they are checked against the new children of this process
   (psutil), as a user would find them. The same figure after the 100 MB
   transfers is reported too ("after 100 MB"), to show retained buffers.

Medians reduce noise; repeats are interleaved (round-robin over executors,
the starting executor rotating each round) so drift on a busy machine hits
every column alike. All warm executors stay alive through the run; idle
workers cost no CPU. This module imports only the stdlib at top level: spawned
PPE workers re-import the main module, and should not pay for numpy or bayou.

The ratio columns are cost ratios, each executor over PPE: time over time,
memory over memory, and for throughput PPE tasks/s over its tasks/s. Below
1.00 it is better (faster, or smaller) than PPE, above 1.00 PPE is. The last
column, bayou-np1/bayou-env, is the same cost ratio of the numpy 1.x env over
the numpy 2 env.

    python benchmarks/compare.py            # full run, a couple of minutes
    python benchmarks/compare.py --quick    # CI smoke, well under 90 s on 2 cores
    python benchmarks/compare.py --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import workloads  # noqa: E402

WORKERS = 2
TIMEOUT = 300.0  # seconds for any single wait: a hang fails the run, it does not stall CI
MIB = 2**20
COLD_SLEEP = 0.05


@dataclass(frozen=True)
class Settings:
    """How much of each workload a run does."""

    latency_calls: int
    latency_blocks: int  # the round trips run in this many interleaved blocks
    latency_warmup: int
    map_tasks: int
    map_repeats: int
    small_array_repeats: int
    big_array_repeats: int
    cold_repeats: int


FULL = Settings(
    latency_calls=2000,
    latency_blocks=40,
    latency_warmup=200,
    map_tasks=10_000,
    map_repeats=9,
    small_array_repeats=30,
    big_array_repeats=5,
    cold_repeats=7,
)
QUICK = Settings(
    latency_calls=300,
    latency_blocks=4,
    latency_warmup=50,
    map_tasks=10_000,
    map_repeats=1,
    small_array_repeats=5,
    big_array_repeats=1,
    cold_repeats=2,
)
SMALL_BYTES = 1 * MIB
BIG_BYTES = 100 * MIB

NUMPY1_PYTHON, NUMPY1 = "3.9", "1.23.5"  # bayou-np1: another Python, numpy 1.x
# Extra ratio columns X/Y: bayou-np1 against a numpy 2 env, bayou-env.
PAIRS = [("bayou-np1", "bayou-env")]
# bayou-np1's 100 MB round trip: at most this much of bayou-env's, and of PPE's.
NUMPY1_GOALS = {"bayou-env": 1.2, "PPE": 0.1}
# The pool core's goals, as cost ratios against PPE: (contender, metric, at most, what).
# A throughput goal of "at least 1.2x PPE's tasks/s" is a cost ratio of at most 1/1.2.
CORE_GOALS = [
    ("bayou", "latency_median", 0.6, "no-op round trip"),
    ("bayou-persistent", "latency_median", 0.6, "persistent round trip"),
    ("bayou", "map_chunk1", 1 / 1.2, "map chunksize=1 (>= 1.2x PPE's tasks/s)"),
    ("bayou", "array_100mb", 0.1, "numpy 100 MB identity"),
]


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    scale: float  # displayed value = stored value * scale
    digits: int


METRICS = [
    Metric("latency_median", "round trip, median", "us", False, 1e6, 0),
    Metric("latency_p90", "round trip, p90", "us", False, 1e6, 0),
    Metric("map_default", "map 10k tiny, default args", "tasks/s", True, 1.0, 0),
    Metric("map_chunk1", "map 10k tiny, chunksize=1", "tasks/s", True, 1.0, 0),
    Metric("map_chunk100", "map 10k tiny, chunksize=100", "tasks/s", True, 1.0, 0),
    Metric("array_1mb", "numpy 1 MB identity", "ms", False, 1e3, 2),
    Metric("array_100mb", "numpy 100 MB identity", "s", False, 1.0, 3),
    Metric("cold_start", "cold start, 2 workers", "ms", False, 1e3, 0),
    Metric("uss_idle", "idle worker USS", "MiB/wkr", False, 1 / MIB, 1),
    Metric("uss_after_big", "worker USS after 100 MB", "MiB/wkr", False, 1 / MIB, 1),
]


@dataclass
class Contender:
    """One executor under test: how to make it, and what was measured."""

    name: str
    make: Callable[[], Executor]
    scale: float = 1.0  # fraction of the round trips and map tasks it runs (slow contenders)
    skip: frozenset[str] = frozenset()  # workloads it cannot run (shown as "n/a")
    close: Callable[[], None] | None = None  # after the run
    executor: Executor | None = None
    pids: list[int] = field(default_factory=list)
    results: dict[str, float | None] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)

    def add(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(value)


class Run:
    """The state of one comparison run: contenders, notes, settings."""

    def __init__(self, settings: Settings, contenders: list[Contender]) -> None:
        self.settings = settings
        self.contenders = contenders
        self.notes: list[str] = []

    def live(self, key: str) -> list[Contender]:
        return [
            c
            for c in self.contenders
            if key not in c.failed and "setup" not in c.failed and key not in c.skip
        ]

    def rounds(self, key: str, repeats: int) -> Iterator[list[Contender]]:
        """Round-robin order for each repeat, starting one executor later each time."""
        for r in range(repeats):
            live = self.live(key)
            if not live:
                return
            k = r % len(live)
            yield live[k:] + live[:k]

    def guarded(self, c: Contender, key: str, fn: Callable[[], None]) -> None:
        """Run one measurement; a failure marks the cell, notes why, and moves on."""
        try:
            fn()
        except Exception as exc:
            c.failed.add(key)
            self.notes.append(f"{c.name}: {key} failed: {type(exc).__name__}: {exc}")
            traceback.print_exc(file=sys.stderr)


# -- the measurements ---------------------------------------------------------------


def cold_start(c: Contender) -> None:
    """Constructor → every worker has finished one 50 ms task (a fresh executor).

    Each task returns (pid, time.monotonic() at its end). The figure is, over
    the workers, the latest of each worker's first finishing time, minus the
    time just before the constructor. If the first round of tasks ran on fewer
    workers than WORKERS (PPE hands a second task to a worker that is already
    up while the next one still boots), more rounds are submitted until every
    worker has reported; later rounds do not change the earlier stamps.
    """
    gc.collect()
    t0 = time.monotonic()
    ex = c.make()
    first: dict[int, float] = {}
    try:
        for _ in range(20):
            futures = [ex.submit(workloads.sleep_stamp, COLD_SLEEP) for _ in range(WORKERS)]
            done, _ = wait(futures, timeout=TIMEOUT)
            if len(done) != WORKERS:
                raise TimeoutError(f"cold start: {len(done)} of {WORKERS} tasks done")
            for f in futures:
                pid, end = f.result(timeout=0)
                first[pid] = min(end, first.get(pid, end))
            if len(first) >= WORKERS:
                break
    finally:
        ex.shutdown(wait=True)
    if len(first) != WORKERS:
        raise RuntimeError(f"cold start: tasks ran on {len(first)} worker(s), not {WORKERS}")
    c.add("cold_start", max(first.values()) - t0)


def warm_up(c: Contender, settings: Settings, run: Run) -> None:
    """Start the long-lived executor, run a task on every worker, find the workers."""
    import psutil

    me = psutil.Process()
    before = {p.pid for p in me.children()}
    ex = c.executor = c.make()
    pids: set[int] = set()
    for _ in range(10):  # both workers busy at once, so each runs a task
        futures = [ex.submit(workloads.sleep_stamp, COLD_SLEEP) for _ in range(WORKERS)]
        pids |= {f.result(timeout=TIMEOUT)[0] for f in futures}
        if len(pids) == WORKERS:
            break
    for _ in range(max(5, int(settings.latency_warmup * c.scale))):
        ex.submit(workloads.noop).result(timeout=TIMEOUT)
    list(
        ex.map(workloads.tiny, range(max(50, int(1000 * c.scale))), chunksize=10, timeout=TIMEOUT)
    )
    c.pids = sorted(pids)
    if len(pids) != WORKERS:
        run.notes.append(f"{c.name}: warm-up reached {len(pids)} worker(s), not {WORKERS}")
    if c.name.startswith("bayou") and c.name != "bayou-persistent":  # (the host's children)
        children = {p.pid for p in me.children()} - before
        if children != pids:
            run.notes.append(
                f"{c.name}: new children of the caller {sorted(children)} are not the "
                f"workers that ran tasks {sorted(pids)}"
            )


def worker_uss(c: Contender, key: str) -> None:
    import psutil

    values = [psutil.Process(pid).memory_full_info().uss for pid in c.pids]
    c.add(key, statistics.fmean(values))


def latency(c: Contender, calls: int) -> None:
    ex = c.executor
    assert ex is not None
    noop = workloads.noop
    samples = c.samples.setdefault("latency", [])
    clock = time.perf_counter
    for _ in range(calls):
        t0 = clock()
        ex.submit(noop).result(timeout=TIMEOUT)
        samples.append(clock() - t0)


def throughput(c: Contender, key: str, tasks: int, chunksize: int | None) -> None:
    ex = c.executor
    assert ex is not None
    tasks = max(50, int(tasks * c.scale))
    kwargs = {} if chunksize is None else {"chunksize": chunksize}
    gc.collect()
    t0 = time.perf_counter()
    out = list(ex.map(workloads.tiny, range(tasks), timeout=TIMEOUT, **kwargs))
    elapsed = time.perf_counter() - t0
    if len(out) != tasks or out[-1] != tasks:
        raise RuntimeError(f"map returned {len(out)} results, last {out[-1:]}")
    c.add(key, tasks / elapsed)


def transfer(c: Contender, key: str, arr: Any, check: bool) -> None:
    ex = c.executor
    assert ex is not None
    gc.collect()
    t0 = time.perf_counter()
    back = ex.submit(workloads.identity, arr).result(timeout=TIMEOUT)
    elapsed = time.perf_counter() - t0
    if check:
        import numpy as np

        if back.shape != arr.shape or not np.array_equal(back, arr):
            raise RuntimeError("identity returned a different array")
    del back
    c.add(key, elapsed)


def percentile(values: Sequence[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


# -- the run --------------------------------------------------------------------------


def contenders(run_notes: list[str]) -> tuple[list[Contender], dict[str, Any]]:
    """The executors to compare; bayou-env is provisioned here, before any timing."""
    import bayou

    spawn = multiprocessing.get_context("spawn")
    out = [
        Contender("PPE", lambda: ProcessPoolExecutor(WORKERS, mp_context=spawn)),
        Contender("bayou", lambda: bayou.EnvExecutor(WORKERS)),
    ]
    info: dict[str, Any] = {}
    for name, spec in (
        ("bayou-env", {"pip": ["numpy"]}),
        ("bayou-np1", {"python": NUMPY1_PYTHON, "pip": [f"numpy=={NUMPY1}"]}),
    ):
        contender = env_contender(name, spec, run_notes, info)
        if contender is not None:
            out.append(contender)
    out.append(persistent_contender())
    try:
        import loky
    except ImportError:
        run_notes.append("loky skipped: not importable (pip install loky)")
    else:
        info["loky_version"] = loky.__version__
        out.append(Contender("loky", lambda: loky.ProcessPoolExecutor(WORKERS)))
    wetlands = wetlands_contender(run_notes, info)
    if wetlands is not None:
        out.append(wetlands)
    return out, info


def persistent_contender() -> Contender:
    """bayou with ``persistent=True``: client -> pool host -> workers, on the caller's
    interpreter. Its workers are the host's children, not this process's, so the
    cold-start and memory rows do not apply; big arrays travel inline through the
    host (no shared memory between client and host), so the 100 MB row is left out."""
    import bayou
    import bayou.persistent

    name = f"compare-{os.getpid()}"
    return Contender(
        "bayou-persistent",
        lambda: bayou.EnvExecutor(WORKERS, persistent=True, name=name),
        skip=frozenset({"cold_start", "uss_idle", "uss_after_big", "array_100mb"}),
        close=lambda: bayou.persistent.stop(name),
    )


def env_contender(
    name: str, spec: dict[str, Any], run_notes: list[str], info: dict[str, Any]
) -> Contender | None:
    """bayou in the env `spec` describes, built or found here, before any timing."""
    import bayou

    env = bayou.Env(**spec)
    t0 = time.perf_counter()
    try:
        environment = bayou.provision(env)
    except Exception as exc:
        run_notes.append(f"{name} skipped: provisioning {env} failed: {exc}")
        return None
    seconds = time.perf_counter() - t0
    numpy = next(
        (p["version"] for p in environment.record.get("pip_packages", ()) if p["name"] == "numpy"),
        "?",
    )
    info[name] = {
        "provision_s": seconds,
        "env_hash": environment.hash,
        "env_python": environment.python_version,
        "env_numpy": numpy,
    }
    run_notes.append(
        f"{name}: env {environment.hash} (Python {environment.python_version}, numpy "
        f"{numpy}) provisioned or found in {seconds:.2f} s before timing"
    )
    return Contender(name, lambda: bayou.EnvExecutor(WORKERS, env=env))


WETLANDS_SCALE = 0.02  # Wetlands runs 2% of the round trips and map tasks (its per-call cost)


def wetlands_contender(run_notes: list[str], info: dict[str, Any]) -> Contender | None:
    """Wetlands over a bayou-provisioned venv through a pixi stand-in; set up before timing."""
    try:
        import wetlands
    except ImportError:
        run_notes.append("Wetlands skipped: not importable (pip install wetlands)")
        return None
    import bayou
    from benchmarks.wetlands_contender import DEBUGPY, WetlandsSetup

    t0 = time.perf_counter()
    try:
        venv = bayou.provision(bayou.Env(pip=["numpy", DEBUGPY]))
        root = bayou.Store().root / "bench-wetlands"
        setup = WetlandsSetup(root, venv.python, "{}.{}".format(*sys.version_info[:2]))
    except Exception as exc:
        run_notes.append(f"Wetlands skipped: setting it up failed: {type(exc).__name__}: {exc}")
        return None
    info["wetlands_version"] = wetlands.__version__
    run_notes.append(
        f"Wetlands {wetlands.__version__}: env over venv {venv.hash} set up or found in "
        f"{time.perf_counter() - t0:.2f} s before timing; it runs {WETLANDS_SCALE:.0%} of the "
        f"round trips and map tasks; it has no map (Executor.map over its submit: the "
        f"chunksize rows do not apply)"
    )
    return Contender(
        "Wetlands",
        lambda: setup.executor(WORKERS),
        scale=WETLANDS_SCALE,
        skip=frozenset({"map_chunk1", "map_chunk100"}),
        close=setup.close,
    )


def measure(run: Run) -> None:
    import numpy as np

    s = run.settings
    say = _progress

    say(f"cold start x{s.cold_repeats}")
    for order in run.rounds("cold_start", s.cold_repeats):
        for c in order:
            run.guarded(c, "cold_start", lambda c=c: cold_start(c))

    say("warm-up")
    for c in run.contenders:
        run.guarded(c, "setup", lambda c=c: warm_up(c, s, run))
    time.sleep(0.2)
    for c in run.live("uss_idle"):
        run.guarded(c, "uss_idle", lambda c=c: worker_uss(c, "uss_idle"))

    say(f"round trip x{s.latency_calls}")
    blocks = s.latency_blocks
    for order in run.rounds("latency", blocks):
        for c in order:
            calls = max(10, int(s.latency_calls * c.scale) // blocks)
            run.guarded(c, "latency", lambda c=c, n=calls: latency(c, n))

    for key, chunksize in (("map_default", None), ("map_chunk1", 1), ("map_chunk100", 100)):
        say(f"map chunksize={chunksize or 'default'} x{s.map_repeats}")
        for order in run.rounds(key, s.map_repeats):
            for c in order:
                run.guarded(
                    c, key, lambda c=c, k=key, n=chunksize: throughput(c, k, s.map_tasks, n)
                )

    rng = np.random.default_rng(0)
    for key, nbytes, repeats in (
        ("array_1mb", SMALL_BYTES, s.small_array_repeats),
        ("array_100mb", BIG_BYTES, s.big_array_repeats),
    ):
        say(f"{key} x{repeats}")
        arr = rng.random(nbytes // 8)
        for c in run.live(key):  # untimed: grow the workers' heaps once
            run.guarded(c, key, lambda c=c, a=arr: transfer(c, "warm-up", a, False))
        for r, order in enumerate(run.rounds(key, repeats)):
            for c in order:
                run.guarded(c, key, lambda c=c, k=key, a=arr, r=r: transfer(c, k, a, r == 0))
        del arr

    time.sleep(0.2)
    for c in run.live("uss_after_big"):
        run.guarded(c, "uss_after_big", lambda c=c: worker_uss(c, "uss_after_big"))

    for c in run.contenders:
        if c.executor is not None:
            c.executor.shutdown(wait=True)
            c.executor = None
        if c.close is not None:
            run.guarded(c, "close", c.close)


def summarise(run: Run) -> None:
    """Medians (and the latency percentiles) into each contender's results."""
    for c in run.contenders:
        lat = c.samples.get("latency", [])
        for m in METRICS:
            if m.key in ("latency_median", "latency_p90"):
                if len(lat) >= 2 and "latency" not in c.failed:
                    q = 50 if m.key == "latency_median" else 90
                    c.results[m.key] = percentile(lat, q)
                else:
                    c.results[m.key] = None
            else:
                values = c.samples.get(m.key)
                ok = values and m.key not in c.failed and "setup" not in c.failed
                ok = ok and m.key not in c.skip
                c.results[m.key] = statistics.median(values) if ok else None


def cost_ratio(m: Metric, ours: float | None, base: float | None) -> float | None:
    """ours/base as a cost: below 1.0 means `ours` is better, whatever the metric."""
    if ours is None or base is None or ours <= 0 or base <= 0:
        return None
    return base / ours if m.higher_is_better else ours / base


def ratio_columns(run: Run) -> list[tuple[str, str]]:
    """(X, Y) for each X/Y column: every executor over PPE, then the PAIRS present."""
    names = [c.name for c in run.contenders]
    over_ppe = [(n, "PPE") for n in names if n != "PPE"] if "PPE" in names else []
    return over_ppe + [(x, y) for x, y in PAIRS if x in names and y in names]


def table(run: Run) -> str:
    by_name = {c.name: c for c in run.contenders}
    columns = ratio_columns(run)
    head = ["workload", "unit", *by_name, *(f"{x}/{y}" for x, y in columns)]
    rows = [head]
    for m in METRICS:
        row = [m.label, m.unit]
        for c in run.contenders:
            v = c.results.get(m.key)
            if m.key in c.skip:
                row.append("n/a")
            else:
                row.append("failed" if v is None else f"{v * m.scale:,.{m.digits}f}")
        for x, y in columns:
            r = cost_ratio(m, by_name[x].results.get(m.key), by_name[y].results.get(m.key))
            row.append("-" if r is None else f"{r:.2f}")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for i, row in enumerate(rows):
        cells = [
            cell.ljust(widths[j]) if j < 2 else cell.rjust(widths[j]) for j, cell in enumerate(row)
        ]
        lines.append("  ".join(cells))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def numpy1_verdict(run: Run) -> str | None:
    """Whether bayou-np1's 100 MB round trip meets its goals (NUMPY1_GOALS), in words."""
    by_name = {c.name: c for c in run.contenders}
    np1 = by_name.get("bayou-np1")
    if np1 is None:
        return None
    m = next(m for m in METRICS if m.key == "array_100mb")
    parts, met = [], True
    for base, goal in NUMPY1_GOALS.items():
        other = by_name[base].results.get(m.key) if base in by_name else None
        r = cost_ratio(m, np1.results.get(m.key), other)
        if r is None:
            parts.append(f"{base}: not measured (goal <= {goal}x)")
            met = False
        else:
            parts.append(f"{r:.3f}x {base}'s (goal <= {goal}x)")
            met = met and r <= goal
    return (
        f"numpy 1.x env, 100 MB round trip: {', '.join(parts)}: "
        f"{'goal met' if met else 'GOAL MISSED'}"
    )


def core_goals(run: Run) -> list[dict[str, Any]]:
    """Each of CORE_GOALS with this run's cost ratio and whether it is met."""
    by_name = {c.name: c for c in run.contenders}
    metrics = {m.key: m for m in METRICS}
    base = by_name.get("PPE")
    out = []
    for name, key, goal, what in CORE_GOALS:
        c = by_name.get(name)
        ratio = None
        if c is not None and base is not None:
            ratio = cost_ratio(metrics[key], c.results.get(key), base.results.get(key))
        out.append(
            {
                "goal": what,
                "contender": name,
                "metric": key,
                "max_cost_ratio": goal,
                "cost_ratio": ratio,
                "met": ratio is not None and ratio <= goal,
            }
        )
    return out


def core_verdict(run: Run) -> str:
    lines = ["pool core goals (cost ratio vs PPE):"]
    for g in core_goals(run):
        ratio = "not measured" if g["cost_ratio"] is None else f"{g['cost_ratio']:.2f}"
        verdict = "met" if g["met"] else "MISSED"
        lines.append(f"  {g['goal']}: {ratio} (goal <= {g['max_cost_ratio']:.2f}): {verdict}")
    return "\n".join(lines)


def report(run: Run, info: dict[str, Any], runtime: float, quick: bool) -> dict[str, Any]:
    by_name = {c.name: c for c in run.contenders}
    metrics = {}
    for m in METRICS:
        entry: dict[str, Any] = {
            "label": m.label,
            "unit": m.unit,
            "scale_to_unit": m.scale,
            "higher_is_better": m.higher_is_better,
            "values": {c.name: c.results.get(m.key) for c in run.contenders},
        }
        if "PPE" in by_name:
            entry["cost_ratio_vs_PPE"] = {
                c.name: cost_ratio(m, c.results.get(m.key), by_name["PPE"].results.get(m.key))
                for c in run.contenders
                if c.name != "PPE"
            }
        for x, y in ratio_columns(run):
            if y != "PPE":
                entry.setdefault("cost_ratios", {})[f"{x}/{y}"] = cost_ratio(
                    m, by_name[x].results.get(m.key), by_name[y].results.get(m.key)
                )
        metrics[m.key] = entry
    return {
        "mode": "quick" if quick else "full",
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "workers": WORKERS,
        "settings": asdict(run.settings),
        "runtime_s": runtime,
        "values_in": "SI base units (seconds, bytes, tasks/s); scale_to_unit converts",
        "cost_ratio": "bayou cost / PPE cost (throughput inverted); < 1 means bayou is better",
        "contenders": [c.name for c in run.contenders],
        "worker_pids": {c.name: c.pids for c in run.contenders},
        "info": info,
        "metrics": metrics,
        "samples": {
            c.name: {k: v for k, v in c.samples.items() if k != "latency"} for c in run.contenders
        },
        "numpy1_goals": {"metric": "array_100mb", "max_cost_ratio": NUMPY1_GOALS},
        "core_goals": core_goals(run),
        "notes": run.notes,
    }


def _progress(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (CI smoke)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    settings = QUICK if args.quick else FULL
    notes: list[str] = []
    cs, info = contenders(notes)
    run = Run(settings, cs)
    run.notes.extend(notes)
    measure(run)
    summarise(run)
    runtime = time.perf_counter() - started

    mode = "quick" if args.quick else "full"
    print(
        f"\nExecutors side by side, {WORKERS} workers ({mode} run; Python "
        f"{sys.version.split()[0]}, {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs; medians)\n"
    )
    print(table(run))
    print(
        "\nX/Y columns = X's cost / Y's cost: time/time, memory/memory, and for "
        "throughput\nY tasks/s / X's tasks/s. Below 1.00 X is better, above 1.00 "
        "Y is.\ncold start includes the 50 ms task (floor 50 ms); USS = unique memory "
        "per worker."
    )
    verdict = numpy1_verdict(run)
    if verdict is not None:
        print(verdict)
    print(core_verdict(run))
    for note in run.notes:
        print(f"note: {note}")
    print(f"\nruntime {runtime:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(report(run, info, runtime, args.quick), indent=1))
    failed = any(c.failed for c in run.contenders if c.name.startswith("bayou"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
