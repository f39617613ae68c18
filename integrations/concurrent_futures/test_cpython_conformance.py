"""CPython's ProcessPoolExecutor tests against bayou's executor, one pytest test per test.

Collection loads CPython's `test.test_concurrent_futures` for this interpreter
(`cpython_suite.load_suite`: the interpreter's own, or fetched once from Debian into
~/.cache/bayou-tests) and makes one pytest test per process-pool case, e.g.
`test_cpython[ProcessPoolSpawnWaitTest.test_timeout]`. The fork and forkserver variants and
the `SKIPS` entries are collected as skipped, with their reasons.

The executor under test is `$BAYOU_CF_EXECUTOR` (default `bayou:EnvExecutor`), given
`env=` from `$BAYOU_CF_ENV_FACTORY` when that is set. If it cannot be imported, every case
errors with the import failure: never a silent skip. If the suite itself cannot be found or
fetched, `test_suite_available` fails with the reason and collection of the rest of the run
is not disturbed.

The harness is validated against the real thing: with
`BAYOU_CF_EXECUTOR=concurrent.futures:ProcessPoolExecutor` every selected case passes.
Each case runs in-process, in the main thread, under a time limit (`$BAYOU_CF_TIMEOUT`,
default 90 s): an executor that hangs fails that case and the run goes on.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator

import pytest

from integrations.concurrent_futures import cpython_suite

pytestmark = pytest.mark.slow

try:
    SUITE: cpython_suite.Suite | None = cpython_suite.load_suite()
    LOAD_ERROR = ""
except cpython_suite.SuiteUnavailable as exc:
    SUITE, LOAD_ERROR = None, str(exc)


def _params() -> list:
    if SUITE is None:
        return []
    honour_skips = not os.environ.get(cpython_suite.ENV_NO_SKIPS)
    params = []
    for case in SUITE.cases.values():
        reason = case.skip_reason
        if reason is not None and (honour_skips or reason == cpython_suite.SPAWN_ONLY_REASON):
            params.append(pytest.param(case.id, marks=pytest.mark.skip(reason=reason)))
        else:
            params.append(pytest.param(case.id))
    return params


def test_suite_available() -> None:
    if SUITE is None:
        pytest.fail(f"CPython's test_concurrent_futures is unavailable: {LOAD_ERROR}")


@pytest.fixture(scope="module")
def session() -> Iterator[cpython_suite.Session]:
    if SUITE is None:
        pytest.fail(LOAD_ERROR, pytrace=False)
    try:
        configured = cpython_suite.Session(SUITE)
    except cpython_suite.ExecutorUnavailable as exc:
        problem = str(exc)
    else:
        problem = ""
    if problem:
        pytest.fail(
            f"the executor under test is not importable: {problem}\n"
            f"(choose it with {cpython_suite.ENV_EXECUTOR}=module:qualname)",
            pytrace=False,
        )
    yield configured
    for problem in configured.close():
        warnings.warn(f"CPython suite teardown: {problem}", stacklevel=1)


@pytest.mark.parametrize("case_id", _params())
def test_cpython(case_id: str, session: cpython_suite.Session) -> None:
    outcome = session.run(case_id)
    if outcome.status == "skipped":
        pytest.skip(outcome.detail)
    if outcome.status == "xfailed":
        pytest.xfail(outcome.detail)
    if outcome.status == "failed":
        pytest.fail(
            f"[{session.executor_spec}] CPython's {case_id} failed:\n{outcome.detail}",
            pytrace=False,
        )
