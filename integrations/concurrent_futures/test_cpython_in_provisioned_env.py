"""The conformance suite's second configuration: workers in an env bayou provisioned.

The suite runs in a child process (its own CLI, `cpython_suite run`) with
`$BAYOU_CF_ENV_FACTORY` pointing at `envs.provisioned_pip_env`, against a private store, so
the whole run (build included) is what a user of a provisioned env would meet. Every case
the first configuration runs must pass here too; the child's report is shown on failure.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from integrations.concurrent_futures import cpython_suite

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_cpython_suite_passes_with_workers_in_a_provisioned_env(tmp_path: Path) -> None:
    try:
        cpython_suite.load_suite()
    except cpython_suite.SuiteUnavailable as exc:
        pytest.fail(f"CPython's test_concurrent_futures is unavailable: {exc}")
    environ = dict(os.environ)
    environ["BAYOU_HOME"] = str(tmp_path / "store")
    environ["BAYOU_CF_ENV_FACTORY"] = "integrations.concurrent_futures.envs:provisioned_pip_env"
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environ.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "integrations.concurrent_futures.cpython_suite", "run"],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=900,
    )
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    summary = re.search(r"(\d+) passed", report)
    assert summary is not None and int(summary.group(1)) >= 40, report
    assert " failed" not in report.splitlines()[-1], report
