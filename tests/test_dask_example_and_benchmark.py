"""examples/dask_two_envs.py prints what it promises; benchmarks/dask_overhead.py runs.

The benchmark's figures are read by people; here it must finish and find
each route where it belongs (it exits 1 when an env task ran in the dask
worker or a plain one outside it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed")

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _run(script: Path, store_root: Path, *args: str) -> str:
    env = {**os.environ, "BAYOU_HOME": str(store_root)}
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_dask_two_envs_example(store_root):
    out = _run(REPO / "examples" / "dask_two_envs.py", store_root)
    assert "packaging 21.3: <LegacyVersion('2024.1-final-ish')>" in out
    assert "packaging 24.1: InvalidVersion" in out
    assert f"the plain task ran in {sys.prefix}" in out
    assert "packaging 24.1: <Version('1.0')>" in out


def test_dask_overhead_benchmark_quick(store_root):
    out = _run(REPO / "benchmarks" / "dask_overhead.py", store_root, "--quick")
    assert "overhead = env - plain+res" in out
    assert "time per task (ms)" in out
