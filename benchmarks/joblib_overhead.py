"""joblib's "bayou" backend next to joblib's "loky": the per-task overhead, in one run.

The contenders, 2 workers each, all driven by the same ``joblib.Parallel`` code:

* ``loky``       ``Parallel(n_jobs=2, backend="loky")``: joblib's default process backend
* ``bayou``      ``Parallel(n_jobs=2, backend="bayou")``: env=None, the caller's interpreter
* ``bayou-env``  the same with ``env=bayou.Env(pip=["packaging==21.3"])``: a uv venv of the
                 caller's Python X.Y, provisioned before anything is timed

Both backends keep their workers between ``Parallel`` calls (loky's reusable executor,
bayou's executor cache), so every figure is for warm workers: one untimed call per
contender and workload comes first. The workloads (functions from
``benchmarks/workloads.py``, an importable module, so every backend gets them the same way):

1. ``batch_size=1``: N calls of ``tiny(x)``, each its own task; wall time / N is the
   backend's whole per-task cost (dispatch, pickling, IPC, callback, joblib's bookkeeping).
2. ``batch_size="auto"``: the same N calls with joblib's auto-batching (what users get
   by default); wall time / N.
3. ``10 ms tasks``: N calls of ``sleep_stamp(0.01)`` with ``batch_size=1``; overhead per
   task = (wall - N * 10 ms / 2 workers) / N, i.e. what the backend adds to real work.
4. ``call latency``: one ``Parallel`` call of 2 ``noop()`` tasks, the fixed cost of a call
   (configure, first dispatch, retrieval, terminate); median over calls, in ms.

Figures are medians over repeats, interleaved round-robin over the contenders (the first
one rotating) so that drift on a busy machine hits every column alike. ``bayou/loky`` is a
cost ratio: below 1.00 bayou is cheaper, above 1.00 loky is.

    python benchmarks/joblib_overhead.py           # full run, about a minute on 2 cores
    python benchmarks/joblib_overhead.py --quick   # CI smoke, ~15 s
    python benchmarks/joblib_overhead.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import workloads  # noqa: E402

N_JOBS = 2
ENV_PIP = ["packaging==21.3"]


def contenders() -> dict[str, Callable[[], dict]]:
    """name -> the `Parallel` keyword arguments that select it."""
    import bayou
    import bayou.joblib  # noqa: F401  (registers "bayou")

    env = bayou.Env(pip=ENV_PIP, name="joblib-overhead")
    bayou.provision(env)
    return {
        "loky": lambda: {"backend": "loky"},
        "bayou": lambda: {"backend": "bayou"},
        "bayou-env": lambda: {"backend": "bayou", "env": env},
    }


def _parallel(kwargs: dict, **more):
    from joblib import Parallel

    return Parallel(n_jobs=N_JOBS, **kwargs, **more)


def per_task_tiny(kwargs: dict, n: int, batch_size) -> float:
    """µs per call of `tiny` (wall / n)."""
    from joblib import delayed

    started = time.perf_counter()
    out = _parallel(kwargs, batch_size=batch_size)(delayed(workloads.tiny)(i) for i in range(n))
    elapsed = time.perf_counter() - started
    if out[-1] != n:
        raise AssertionError(f"wrong results: {out[-3:]}")
    return elapsed / n * 1e6


def per_task_sleep(kwargs: dict, n: int, seconds: float = 0.01) -> float:
    """µs a backend adds to each `seconds`-long task, over the ideal n*seconds/N_JOBS."""
    from joblib import delayed

    started = time.perf_counter()
    _parallel(kwargs, batch_size=1)(delayed(workloads.sleep_stamp)(seconds) for _ in range(n))
    elapsed = time.perf_counter() - started
    return (elapsed - n * seconds / N_JOBS) / n * 1e6


def call_latency(kwargs: dict, calls: int) -> float:
    """Median ms of one `Parallel` call of two noop tasks."""
    from joblib import delayed

    times = []
    for _ in range(calls):
        started = time.perf_counter()
        _parallel(kwargs)(delayed(workloads.noop)() for _ in range(2))
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


ROWS = [
    ("batch_size=1, µs/task", lambda kw, q: per_task_tiny(kw, 1000 if q else 5000, 1)),
    ("batch_size=auto, µs/task", lambda kw, q: per_task_tiny(kw, 5000 if q else 50000, "auto")),
    ("10 ms tasks, µs added/task", lambda kw, q: per_task_sleep(kw, 40 if q else 200)),
    ("call latency (2 tasks), ms", lambda kw, q: call_latency(kw, 10 if q else 50)),
]


def run(quick: bool) -> dict:
    backends = contenders()
    names = list(backends)
    repeats = 2 if quick else 5
    results: dict[str, dict[str, list[float]]] = {row: {n: [] for n in names} for row, _ in ROWS}
    for row, measure in ROWS:
        for name in names:  # warm-up: workers started, modules imported, caches filled
            measure(backends[name](), True)
        for r in range(repeats):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                results[row][name].append(measure(backends[name](), quick))
    import bayou.joblib

    bayou.joblib.shutdown()
    return {
        row: {name: statistics.median(values) for name, values in cols.items()}
        for row, cols in results.items()
    }


def report(figures: dict) -> str:
    names = list(next(iter(figures.values())))
    head = f"{'':30}" + "".join(f"{n:>12}" for n in names) + f"{'bayou/loky':>12}"
    if "bayou-env" in names:
        head += f"{'env/loky':>12}"
    lines = [head]
    for row, cols in figures.items():
        line = f"{row:30}" + "".join(f"{cols[n]:12.1f}" for n in names)
        line += f"{cols['bayou'] / cols['loky']:12.2f}"
        if "bayou-env" in cols:
            line += f"{cols['bayou-env'] / cols['loky']:12.2f}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and repeats (CI)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    import joblib

    figures = run(args.quick)
    print(
        f"joblib {joblib.__version__}, Python {platform.python_version()}, "
        f"{N_JOBS} workers per backend, medians{' (quick)' if args.quick else ''}"
    )
    print(report(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
