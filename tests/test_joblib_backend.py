"""The "bayou" joblib backend with the caller's own interpreter: joblib's API, bayou's workers.

Real joblib, real worker processes. Environments that lack joblib (the point of unpacking
joblib's batches in the caller) are covered by test_joblib_envs.py.
"""

from __future__ import annotations

import contextlib
import inspect
import multiprocessing
import os
import sys
import threading
import time
from pathlib import Path

import pytest
from joblib import Parallel, delayed, parallel_config
from joblib._parallel_backends import ParallelBackendBase
from joblib.parallel import BACKENDS

import bayou
import bayou.joblib
from bayou.joblib import BayouBackend
from tests.executor_tasks import basic
from tests.support.processes import is_running

WAIT = 30.0  # bound for polling loops: a hang fails the test instead of blocking it
#: joblib >= 1.5: `Parallel(backend="bayou", env=..., task_timeout=...)` reaches the backend.
PARALLEL_TAKES_BACKEND_KWARGS = "backend_kwargs" in inspect.signature(Parallel).parameters


@pytest.fixture(autouse=True)
def fresh_executors():
    """Each test starts without cached executors and leaves none behind."""
    bayou.joblib.shutdown()
    yield
    bayou.joblib.shutdown()


# -- task functions (imported by reference in the workers) -------------------------------


def square(x):
    return x * x


def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()


def set_env(name, value):
    os.environ[name] = value


def fail_on(x, bad):
    if x == bad:
        raise ValueError(f"bad input {x}")
    return x


def record_pid_and_sleep(directory, seconds):
    """Leave a file named after this worker's pid, then sleep (a task to be aborted)."""
    Path(directory, str(os.getpid())).write_text("")
    time.sleep(seconds)
    return os.getpid()


def fail_once_a_sleeper_runs(directory):
    """Raise, but only once a `record_pid_and_sleep` task is running on another worker."""
    deadline = time.monotonic() + WAIT
    while not any(Path(directory).iterdir()) and time.monotonic() < deadline:
        time.sleep(0.01)
    raise ValueError("first task failed")


def alive(pids):
    return {pid for pid in pids if is_running(pid)}


def recorded_pids(directory):
    return {int(p.name) for p in Path(directory).iterdir()}


# -- registration and options ------------------------------------------------------------


def test_importing_registers_the_backend():
    assert BACKENDS["bayou"] is BayouBackend


def test_results_come_back_in_order_from_worker_processes():
    out = Parallel(n_jobs=2, backend="bayou")(delayed(square)(i) for i in range(50))
    assert out == [i * i for i in range(50)]
    pids = Parallel(n_jobs=2, backend="bayou", batch_size=1)(
        delayed(pid_after)(0.1) for _ in range(6)
    )
    assert os.getpid() not in pids


def test_keyword_arguments_and_mixed_functions_in_one_batch():
    calls = [delayed(basic.echo)(1, b=2), delayed(square)(3), delayed(pow)(2, 5)]
    out = Parallel(n_jobs=2, backend="bayou", batch_size=3)(calls)
    assert out == [((1,), {"b": 2}), 9, 32]


def test_n_jobs_1_still_runs_in_a_worker_not_in_the_caller():
    with parallel_config(backend="bayou", n_jobs=1):
        pids = Parallel()(delayed(os.getpid)() for _ in range(4))
    assert os.getpid() not in pids
    assert len(set(pids)) == 1


def test_negative_n_jobs_follow_joblibs_rule():
    backend = BayouBackend()
    cpus = __import__("joblib").cpu_count()
    assert backend.workers_for(-1) == cpus
    assert backend.workers_for(-(cpus + 5)) == 1
    with pytest.raises(ValueError, match="n_jobs == 0"):
        backend.workers_for(0)


def test_unknown_options_and_bad_env_are_named():
    with (
        pytest.raises(TypeError, match="'max_wrokers'"),
        parallel_config(backend="bayou", max_wrokers=3),
    ):
        pass
    with pytest.raises(TypeError, match="'spam'"):
        Parallel(n_jobs=2, backend="bayou", spam=1)(delayed(square)(1) for _ in range(2))
    with (
        pytest.raises(TypeError, match=r"must be a bayou\.Env.*str"),
        parallel_config(backend="bayou", env="numpy==2.0"),
    ):
        pass


def test_executor_options_pass_through_parallel_and_parallel_config():
    with pytest.raises(bayou.TaskTimeoutError), parallel_config(backend="bayou", task_timeout=1):
        Parallel(n_jobs=2)(delayed(pid_after)(s) for s in (0, 60))
    if PARALLEL_TAKES_BACKEND_KWARGS:
        with pytest.raises(bayou.TaskTimeoutError):
            Parallel(n_jobs=2, backend="bayou", task_timeout=1)(
                delayed(pid_after)(s) for s in (0, 60)
            )
    with parallel_config(
        backend="bayou", n_jobs=2, initializer=set_env, initargs=("BAYOU_JOBLIB_INIT", "ran")
    ):
        seen = Parallel()(delayed(basic.getenv)("BAYOU_JOBLIB_INIT") for _ in range(4))
    assert seen == ["ran"] * 4


# -- errors, abort, timeout ----------------------------------------------------------------


def test_an_error_keeps_its_type_and_remote_traceback():
    with pytest.raises(ValueError, match="bad input 3") as info:
        Parallel(n_jobs=2, backend="bayou")(delayed(fail_on)(i, 3) for i in range(10))
    assert "fail_on" in str(info.value.__cause__)


def test_an_error_aborts_the_rest_and_kills_running_workers(tmp_path):
    calls = [delayed(fail_once_a_sleeper_runs)(tmp_path)]
    calls += [delayed(record_pid_and_sleep)(tmp_path, 60) for _ in range(20)]
    with pytest.raises(ValueError, match="first task failed"):
        Parallel(n_jobs=2, backend="bayou", batch_size=1)(calls)
    sleepers = recorded_pids(tmp_path)
    assert sleepers, "no sleeping task ever started"
    assert alive(sleepers) == set()  # killed, not left sleeping for a minute


def test_a_managed_parallel_stays_usable_after_an_abort(tmp_path):
    with Parallel(n_jobs=2, backend="bayou", batch_size=1) as parallel:
        before = parallel._backend._workers
        calls = [delayed(fail_once_a_sleeper_runs)(tmp_path)]
        calls += [delayed(record_pid_and_sleep)(tmp_path, 60) for _ in range(4)]
        with pytest.raises(ValueError):
            parallel(calls)
        assert alive(recorded_pids(tmp_path)) == set()
        assert parallel._backend._workers is not before  # a fresh executor
        assert parallel(delayed(square)(i) for i in range(5)) == [0, 1, 4, 9, 16]
    assert parallel._backend._workers is None


def test_timeout_raises_and_kills_the_late_tasks(tmp_path):
    # 5 s: time enough for the workers to start and record their pids, even on a busy machine
    with pytest.raises(multiprocessing.TimeoutError):
        Parallel(n_jobs=2, backend="bayou", timeout=5)(
            delayed(record_pid_and_sleep)(tmp_path, 60) for _ in range(4)
        )
    sleepers = recorded_pids(tmp_path)
    assert sleepers
    assert alive(sleepers) == set()


def test_an_abort_spares_another_call_sharing_the_executor(tmp_path):
    results = {}

    def other_call():
        results["other"] = Parallel(n_jobs=2, backend="bayou", batch_size=1)(
            delayed(pid_after)(0.3) for _ in range(6)
        )

    thread = threading.Thread(target=other_call)
    thread.start()
    try:
        with pytest.raises(ValueError):
            Parallel(n_jobs=2, backend="bayou", batch_size=1)(
                delayed(fail_on)(i, 2) for i in range(8)
            )
    finally:
        thread.join(WAIT)
    assert len(results["other"]) == 6


# -- generators, batching, reuse ------------------------------------------------------------


def test_return_as_generator_is_lazy_and_ordered():
    gen = Parallel(n_jobs=2, backend="bayou", return_as="generator")(
        delayed(square)(i) for i in range(20)
    )
    assert not isinstance(gen, list)
    assert list(gen) == [i * i for i in range(20)]


def test_return_as_generator_unordered_yields_the_first_finished_first():
    gen = Parallel(n_jobs=2, backend="bayou", return_as="generator_unordered", batch_size=1)(
        delayed(basic.sleep_then)(seconds, value) for seconds, value in [(5, "slow"), (0, "fast")]
    )
    assert list(gen) == ["fast", "slow"]


def test_auto_batching_grows_batches_for_tiny_tasks():
    with Parallel(n_jobs=2, backend="bayou") as parallel:
        assert parallel(delayed(square)(i) for i in range(3000)) == [i * i for i in range(3000)]
        assert parallel._backend.compute_batch_size() > 1


def test_workers_are_reused_by_later_calls_and_shutdown_ends_them():
    first = Parallel(n_jobs=2, backend="bayou", batch_size=1)(
        delayed(pid_after)(0.2) for _ in range(6)
    )
    second = Parallel(n_jobs=2, backend="bayou", batch_size=1)(
        delayed(pid_after)(0.2) for _ in range(6)
    )
    workers = set(first) | set(second)
    assert len(workers) == 2  # the same two workers served both calls
    bayou.joblib.shutdown()
    deadline = time.monotonic() + WAIT
    while alive(workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive(workers) == set()


def test_a_lambda_runs_in_a_same_version_env():
    assert Parallel(n_jobs=2, backend="bayou")(delayed(lambda x: -x)(i) for i in range(4)) == [
        0,
        -1,
        -2,
        -3,
    ]


# -- thread limits ------------------------------------------------------------------------


def test_workers_get_joblibs_thread_limits_and_the_envs_own_vars_win(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    expected = str(max(__import__("joblib").cpu_count() // 2, 1))
    got = Parallel(n_jobs=2, backend="bayou")(
        delayed(basic.getenv)("OMP_NUM_THREADS") for _ in range(2)
    )
    assert got == [expected] * 2
    with parallel_config(backend="bayou", n_jobs=2, inner_max_num_threads=1):
        got = Parallel()(delayed(basic.getenv)("OPENBLAS_NUM_THREADS") for _ in range(2))
    assert got == ["1"] * 2
    env = bayou.Env.current(env_vars={"OMP_NUM_THREADS": "3"})
    with parallel_config(backend="bayou", n_jobs=2, env=env):
        got = Parallel()(delayed(basic.getenv)("OMP_NUM_THREADS") for _ in range(2))
    assert got == ["3"] * 2


# -- the older backend API -----------------------------------------------------------------


class LegacyBayouBackend(BayouBackend):
    """A backend of the older API: `apply_async`, results fetched with `.get(timeout)`.

    joblib >= 1.5 calls `submit`, whose default (kept here) warns and calls
    `apply_async`; joblib 1.4 calls `apply_async` itself.
    """

    supports_retrieve_callback = False

    if hasattr(ParallelBackendBase, "submit"):

        def submit(self, func, callback=None):
            return ParallelBackendBase.submit(self, func, callback)  # -> apply_async


def _legacy_warning():
    if hasattr(ParallelBackendBase, "submit"):
        return pytest.warns(DeprecationWarning, match="apply_async")
    return contextlib.nullcontext()


def test_the_apply_async_api_runs_batches_and_honours_timeout():
    with _legacy_warning():
        out = Parallel(n_jobs=2, backend=LegacyBayouBackend())(
            delayed(square)(i) for i in range(30)
        )
    assert out == [i * i for i in range(30)]
    with _legacy_warning(), pytest.raises(multiprocessing.TimeoutError):
        Parallel(n_jobs=2, backend=LegacyBayouBackend(), timeout=0.5)(
            delayed(basic.sleep_then)(60) for _ in range(2)
        )


def test_main_module_functions_work(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(
        "import bayou.joblib\n"
        "from joblib import Parallel, delayed\n"
        "def cube(x):\n"
        "    return x ** 3\n"
        "if __name__ == '__main__':\n"
        "    print(Parallel(n_jobs=2, backend='bayou')(delayed(cube)(i) for i in range(4)))\n"
    )
    import subprocess

    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "[0, 1, 8, 27]" in proc.stdout


# -- the executor's batch transport -----------------------------------------------------


def test_submit_batch_uniform_and_mixed_calls():
    with bayou.EnvExecutor(1) as ex:
        one = 1
        assert ex.submit_batch([(basic.add, (i,), {"b": one}) for i in range(4)]).result() == [
            1,
            2,
            3,
            4,
        ]
        mixed = [(basic.add, (1,), {"b": 2}), (square, (3,), {}), (basic.echo, (), {"k": 1})]
        assert ex.submit_batch(mixed).result() == [3, 9, ((), {"k": 1})]
        with pytest.raises(ValueError, match="at least one call"):
            ex.submit_batch([])


def test_submit_batch_names_the_call_and_argument_that_cannot_be_pickled():
    with bayou.EnvExecutor(1) as ex:
        future = ex.submit_batch([(square, (2,), {}), (square, (threading.Lock(),), {})])
        with pytest.raises(bayou.PicklingError, match=r"argument 0 \(_thread\.lock\).*square"):
            future.result()
        with pytest.raises(bayou.PicklingError, match=r"keyword argument 'b'.*add"):
            ex.submit_batch([(basic.add, (1,), {"b": threading.Lock()})]).result()
