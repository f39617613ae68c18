"""The benchmark scripts keep running (figures are read by people, not asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, marker",
    [
        ("compare.py", "bayou-np1/bayou-env"),  # the numpy 1.x env (Python 3.9) ran too
        ("provisioning.py", "ratio = bayou / plain"),
        ("joblib_overhead.py", "bayou/loky"),
        ("chaos.py", "lost"),
    ],
)
def test_benchmark_script_runs_quick(script, marker, store_root):
    env = {**os.environ, "BAYOU_HOME": str(store_root)}
    out = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert marker in out.stdout
