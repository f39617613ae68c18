"""joblib's backend-parametrized tests against the "bayou" backend, one pytest test per case.

Collection imports `joblib.test.test_parallel` from the installed joblib (`suite.py`),
selects the tests parametrized over process backends and puts a copy of each in this
module's namespace, parametrized with the combinations that involve bayou, e.g.
`test_simple_parallel[bayou-2-11]`. pytest then runs them as joblib's own CI would, with
the tests' own fixtures (`tmpdir`, `monkeypatch`, ...) and marks (`with_numpy`, ...).
Skipped combinations carry their reason (`suite.SKIPS`, listed in README.md).

If joblib's test module cannot be imported, `test_suite_available` fails with the reason.
"""

from __future__ import annotations

import pytest

from integrations.joblib import suite

pytestmark = pytest.mark.slow

try:
    CASES = suite.select_cases(suite.load_module())
    LOAD_ERROR = ""
except suite.SuiteUnavailable as exc:
    CASES, LOAD_ERROR = {}, str(exc)


@pytest.fixture(scope="module", autouse=True)
def _shutdown_cached_executors():
    """The backend keeps its executors for reuse; end their workers after the module."""
    yield
    import bayou.joblib

    bayou.joblib.shutdown()


def test_suite_available() -> None:
    if LOAD_ERROR:
        pytest.fail(f"joblib's test_parallel is unavailable: {LOAD_ERROR}")
    assert CASES, "no test of joblib's test_parallel is parametrized over backends"


globals().update({name: case.function() for name, case in CASES.items()})
