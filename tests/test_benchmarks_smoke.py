"""The benchmark scripts keep running (figures are read by people, not asserted)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
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
    if script == "compare.py":  # every goal of the pool core has its figure
        goals = out.stdout.split("pool core goals", 1)[1]
        assert len(re.findall(rf": {NUMBER} \(goal <= {NUMBER}\): (met|MISSED)", goals)) == 4


ACTOR_ROWS = ["bayou actor call", "bayou task round trip", "PPE round trip"]
ACTOR_RATIOS = ["bayou actor / bayou task", "bayou actor / PPE"]
HAVE_DASK = importlib.util.find_spec("distributed") is not None  # the extra "dask"
NUMBER = r"\d[\d,]*(\.\d+)?"


@pytest.mark.slow
def test_actors_benchmark_runs_quick(store_root, tmp_path):
    """actors.py --quick prints every row and ratio with numbers (no time is asserted)."""
    env = {**os.environ, "BAYOU_HOME": str(store_root)}
    out = subprocess.run(
        [sys.executable, str(BENCH / "actors.py"), "--quick", "--json", str(tmp_path / "a.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    rows, ratios, keys = list(ACTOR_ROWS), list(ACTOR_RATIOS), {"bayou_actor", "bayou_task", "ppe"}
    if HAVE_DASK:
        rows.append("Dask actor call")
        ratios.append("Dask actor / bayou actor")
        keys.add("dask_actor")
    if "note: other Python skipped" not in text:  # else a Python of another X.Y ran too
        other = re.search(r"^\| bayou actor call, Python (3\.\d+) \|", text, re.M)
        assert other, text
        rows += [
            f"bayou actor call, Python {other[1]}",
            f"bayou task round trip, Python {other[1]}",
        ]
    for row in rows:  # label | what | median | p90 | round medians
        pattern = (
            rf"^\| {re.escape(row)} \| [^|]+ \| {NUMBER} \| {NUMBER} \| {NUMBER}–{NUMBER} \|$"
        )
        assert re.search(pattern, text, re.M), f"{row!r} has no figures:\n{text}"
    for ratio in ratios:
        pattern = rf"^\| {re.escape(ratio)} \| {NUMBER} \| {NUMBER} \({NUMBER}–{NUMBER}\) \|"
        assert re.search(pattern, text, re.M), f"{ratio!r} has no figures:\n{text}"
    assert re.search(r"^bayou actor call: median \d+ µs", text, re.M), text
    report = json.loads((tmp_path / "a.json").read_text())
    assert keys <= set(report["rows"])
    assert all(r["median_s"] > 0 and not r["failed"] for r in report["rows"].values())
