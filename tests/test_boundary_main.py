"""Functions and classes of the user's own script (``__main__``) crossing into envs.

Each test writes a real script and runs it with this interpreter, as a user
would (``python script.py``, ``python -m pkg.mod``). For a worker of another
Python X.Y the script is imported there under ``__mp_main__``, as
multiprocessing's spawn does: its ``if __name__ == "__main__":`` block does
not run (if it did, the stand-in ``bayou.EnvExecutor`` of an env without bayou
would raise). For a worker of the caller's X.Y, by value stays the fallback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import BOUNDARY_ENVS, CALLER_XY

pytestmark = pytest.mark.slow

OTHER_PYTHON = "py3.9-numpy1.23"
SAME_PYTHON = f"py{CALLER_XY}-numpy1.26"
NEWER_PYTHON = next(n for n in BOUNDARY_ENVS if n.endswith("numpy2"))

USER_SCRIPT = """
import sys

import numpy as np

import bayou  # in the worker: the runtime's stand-in, which is enough at import

ENV = bayou.Env.existing(sys.argv[1] if len(sys.argv) > 1 else "unused in workers")
IMPORTED_AS = __name__


def double(x):
    return x * 2


def imported_as():
    return IMPORTED_AS


class Point:
    def __init__(self, x):
        self.x = x

    def norm(self):
        return abs(self.x)

    @classmethod
    def origin(cls):
        return cls(0)

    class Unit:
        def size(self):
            return 1


def make_point(x):
    return Point(x)


def norm_of(point):
    return point.norm()


if __name__ == "__main__":
    with bayou.EnvExecutor(2, env=ENV) as ex:
        print("function:", ex.submit(double, np.arange(3)).result(60).tolist())
        print("imported as:", ex.submit(imported_as).result(60))
        print("method:", ex.submit(Point(-3).norm).result(60))
        print("classmethod:", type(ex.submit(Point.origin).result(60)).__name__)
        print("nested class method:", ex.submit(Point.Unit().size).result(60))
        print("instance as argument:", ex.submit(norm_of, Point(-7)).result(60))
        back = ex.submit(make_point, 4).result(60)
        print("instance back:", type(back).__module__, type(back).__name__, back.x)
        print("map:", list(ex.map(double, [1, 2, 3])))
"""


def run_script(path: Path, *args: str, cwd: Path | None = None, module: str | None = None):
    command = [sys.executable, "-m", module] if module else [sys.executable, str(path)]
    result = subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        cwd=cwd or path.parent,
        timeout=300,
    )
    return result


@pytest.mark.parametrize("env_name", list(BOUNDARY_ENVS))
def test_a_scripts_functions_methods_and_classes_cross(tmp_path, boundary_envs, env_name):
    script = tmp_path / "user_script.py"
    script.write_text(USER_SCRIPT)
    result = run_script(script, str(boundary_envs[env_name].path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "function: [0, 2, 4]" in out
    assert "method: 3" in out
    assert "classmethod: Point" in out
    assert "nested class method: 1" in out
    assert "instance as argument: 7" in out
    # an instance of the script's class made in the worker is the caller's class again
    assert "instance back: __main__ Point 4" in out
    assert "map: [2, 4, 6]" in out
    if env_name == SAME_PYTHON:
        assert "imported as: __main__" in out  # by value: the function's own globals
    else:
        assert "imported as: __mp_main__" in out  # the script, imported as spawn does


MISSING_IMPORT_SCRIPT = """
import sys

import packaging.version  # the caller has it, the envs do not

import bayou


def double(x):
    return x * 2


if __name__ == "__main__":
    with bayou.EnvExecutor(1, env=bayou.Env.existing(sys.argv[1])) as ex:
        try:
            print("result:", ex.submit(double, 21).result(60))
        except Exception as exc:
            print("error:", type(exc).__name__, exc)
        print("still works:", ex.submit(len, [1, 2]).result(60))
"""


@pytest.mark.parametrize("env_name", [OTHER_PYTHON, SAME_PYTHON])
def test_a_script_importing_what_the_env_lacks_names_script_line_import_and_fix(
    tmp_path, boundary_envs, env_name
):
    script = tmp_path / "needs_packaging.py"
    script.write_text(MISSING_IMPORT_SCRIPT)
    result = run_script(script, str(boundary_envs[env_name].path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "still works: 2" in out
    if env_name == SAME_PYTHON:
        assert "result: 42" in out  # by value: the script is not imported there
        return
    (line,) = [x for x in out.splitlines() if x.startswith("error:")]
    assert line.startswith("error: UnpicklingError")
    assert str(script) in line
    assert "line 4 (import packaging.version" in line
    assert "No module named 'packaging'" in line
    assert "Python 3.9" in line
    assert 'if __name__ == "__main__":' in line  # the fix


GUARDED_SCRIPT = """
import sys

import bayou

if __name__ == "__main__":

    def hidden(x):  # defined under the guard: the worker's import never defines it
        return x

    with bayou.EnvExecutor(1, env=bayou.Env.existing(sys.argv[1])) as ex:
        try:
            print("result:", ex.submit(hidden, 1).result(60))
        except Exception as exc:
            print("error:", type(exc).__name__, exc)
"""


def test_a_function_defined_under_the_main_guard_is_named_with_the_fix(tmp_path, boundary_envs):
    script = tmp_path / "guarded.py"
    script.write_text(GUARDED_SCRIPT)
    result = run_script(script, str(boundary_envs[NEWER_PYTHON].path))
    assert result.returncode == 0, result.stderr
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("error:")]
    assert "defines no 'hidden'" in line and str(script) in line
    assert "above that block" in line


def test_a_script_run_with_dash_m_keeps_its_package(tmp_path, boundary_envs):
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("def triple(x):\n    return 3 * x\n")
    (package / "run.py").write_text(
        textwrap.dedent(
            """
            import sys

            import bayou

            from .helpers import triple  # a relative import: needs the package


            def work(x):
                return triple(x) + 1


            if __name__ == "__main__":
                with bayou.EnvExecutor(1, env=bayou.Env.existing(sys.argv[1])) as ex:
                    print("work:", ex.submit(work, 2).result(60))
            """
        )
    )
    result = run_script(
        package / "run.py",
        str(boundary_envs[OTHER_PYTHON].path),
        cwd=tmp_path,
        module="userpkg.run",
    )
    assert result.returncode == 0, result.stderr
    assert "work: 7" in result.stdout


def test_a_lambda_in_a_script_to_another_python_is_refused_naming_it(tmp_path, boundary_envs):
    script = tmp_path / "with_lambda.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys

            import bayou

            if __name__ == "__main__":
                with bayou.EnvExecutor(1, env=bayou.Env.existing(sys.argv[1])) as ex:
                    try:
                        ex.submit(lambda x: x, 1)
                    except bayou.CrossVersionError as exc:
                        print("error:", exc)
            """
        )
    )
    result = run_script(script, str(boundary_envs[OTHER_PYTHON].path))
    assert result.returncode == 0, result.stderr
    assert "error: cannot send the lambda defined in module '__main__'" in result.stdout
    assert "Python 3.9" in result.stdout and f"Python {CALLER_XY}" in result.stdout
    assert os.path.basename(str(script)) not in result.stderr
