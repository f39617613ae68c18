"""Every example a user copies from runs, and prints what it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXPECTED = {
    "actor_model.py": [
        "results agree with the first call: True",
        "the model runs on Python 3.9, numpy 1.23.5, 206 calls served",
    ],
    "joblib_backend.py": [
        "'2024.1-final-ish'   -> LegacyVersion (packaging 21.3)",
        "...and the caller has packaging",
    ],
    "quickstart.py": ["3500000 bytes is 3.5 MB", "the caller still doesn't have humanize"],
    "dask_two_envs.py": [
        "packaging 21.3: <LegacyVersion('2024.1-final-ish')>",
        "packaging 24.1: InvalidVersion",
    ],
    "two_envs.py": [
        "packaging 21.3: <LegacyVersion('2024.1-final-ish')>",
        "packaging 24.1: InvalidVersion",
    ],
    "two_numpys.py": [
        "numpy 1.23.5 / scikit-image 0.19.3: 5 objects",
        "numpy 2.4.6 / scikit-image 0.26.0: 5 objects",
        "the two segmentations agree",
    ],
}


def test_every_example_is_checked():
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(EXPECTED)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name, store_root):
    env = {**os.environ, "BAYOU_HOME": str(store_root)}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    for line in EXPECTED[name]:
        assert line in result.stdout
