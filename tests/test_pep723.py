"""Scripts with PEP 723 inline metadata (`Env.from_script`) and pyproject.toml files as
env specs: requires-python, dependencies, and conda packages from [tool.bayou] or
[tool.pixi]. Errors name the script's own line."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import bayou
from bayou import Env, SpecError
from tests.conftest import CALLER_XY

SCRIPT = '''\
#!/usr/bin/env python
"""A script that says what it needs."""
# /// script
# requires-python = ">=3.8"
# dependencies = [
#   "six==1.16.0",
# ]
# ///
import six

print("six", six.__version__)
'''


def test_script_metadata_is_read(tmp_path):
    path = tmp_path / "tool.py"
    path.write_text(SCRIPT)
    env = Env.from_script(path)
    assert env.pip == ("six==1.16.0",) and env.python == CALLER_XY and not env.conda
    assert env.name == "tool" and env.source == str(path)
    assert Env.from_file(path).hash == env.hash == Env(pip=["six==1.16.0"]).hash


def test_conda_packages_from_tool_bayou_and_tool_pixi(tmp_path):
    path = tmp_path / "both.py"
    path.write_text(
        textwrap.dedent(
            """\
            # /// script
            # requires-python = "==3.9.*"
            # dependencies = ["six==1.16.0"]
            # [tool.bayou]
            # conda = ["bayou-demo-lib=1.0"]
            # channels = ["file:///srv/channel"]
            # env-vars = { OMP_NUM_THREADS = "1" }
            # [tool.pixi.dependencies]
            # bayou-demo-tool = "*"
            # ///
            """
        )
    )
    env = Env.from_script(path)
    assert env.conda == ("bayou-demo-lib=1.0", "bayou-demo-tool", "python==3.9.*")
    assert env.python == "3.9"  # requires-python, as the conda spec for python
    assert env.channels == ("file:///srv/channel",) and env.env_vars["OMP_NUM_THREADS"] == "1"


@pytest.mark.parametrize(
    "block, line, entry, message",
    [
        (
            '# dependencies = [\n#   "six",\n#   "not a req!!",\n# ]',
            4,
            "not a req!!",
            "pip requirement",
        ),
        ('# [tool.bayou]\n# conda = ["numpy ^^2"]', 3, "numpy ^^2", "conda package spec"),
        ('# [tool.bayou]\n# pip = ["six"]', 3, "pip", "unknown key in [tool.bayou]"),
        ('# dependencies = []\n# dependencies = ["six"]', 3, None, "invalid TOML"),
        ('# requires-python = "3.x"', 2, "3.x", "requires-python is not a version specifier"),
        ('# python = "3.12"', 2, "python", "unknown key in the script block"),
    ],
)
def test_script_errors_name_the_scripts_line(tmp_path, block, line, entry, message):
    path = tmp_path / "bad.py"
    path.write_text(f"# /// script\n{block}\n# ///\nprint(1)\n")
    with pytest.raises(SpecError) as info:
        Env.from_script(path)
    assert message in str(info.value) and info.value.file == str(path)
    assert (info.value.line, info.value.entry) == (line, entry)


def test_a_script_without_metadata_or_with_two_blocks(tmp_path):
    path = tmp_path / "plain.py"
    path.write_text("print(1)\n")
    with pytest.raises(SpecError, match="no PEP 723 metadata"):
        Env.from_script(path)
    path.write_text("# /// script\n# dependencies = []\n# ///\nprint(1)\n" * 2)
    with pytest.raises(SpecError, match="more than one") as info:
        Env.from_script(path)
    assert info.value.line == 5


def test_pyproject_with_and_without_tool_pixi(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text(
        '[project]\nname = "demo"\nrequires-python = ">=3.8"\n'
        'dependencies = ["six==1.16.0", "packaging>=21"]\n'
    )
    env = Env.from_file(path)
    assert env.pip == ("packaging>=21", "six==1.16.0") and not env.conda and env.name == "demo"
    path.write_text(
        path.read_text() + '\n[tool.pixi.workspace]\nchannels = ["file:///srv/channel"]\n'
        'platforms = ["linux-64"]\n\n[tool.pixi.dependencies]\nbayou-demo-lib = "==2.0"\n\n'
        '[tool.pixi.pypi-dependencies]\ndemo = { path = ".", editable = true }\n'
    )
    env = Env.from_file(path)
    assert env.conda == ("bayou-demo-lib==2.0", f"python {CALLER_XY}.*")
    assert env.pip == ("packaging>=21", "six==1.16.0")  # not the project itself
    path.write_text('[project]\nname = "d"\ndynamic = ["dependencies"]\n')
    with pytest.raises(SpecError, match="dynamic") as info:
        Env.from_file(path)
    assert info.value.line == 3


@pytest.mark.slow
def test_a_script_runs_in_the_env_its_metadata_asks_for(store, tmp_path):
    path = tmp_path / "tool.py"
    path.write_text(SCRIPT)
    result = bayou.run(Env.from_script(path), ["python", str(path)])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "six 1.16.0"
    created = subprocess.run(
        [sys.executable, "-m", "bayou.cli", "env", "create", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert created.returncode == 0 and created.stdout.startswith(Env.from_script(path).hash)


@pytest.mark.slow
def test_a_script_with_conda_packages_builds(store, conda_channel, tmp_path):
    path = tmp_path / "conda_tool.py"
    path.write_text(
        f'# /// script\n# dependencies = ["six==1.16.0"]\n# [tool.bayou]\n'
        f'# conda = ["bayou-demo-lib=2.0"]\n# channels = ["{conda_channel}"]\n# ///\n'
        "import bayou_demo_lib, six\nprint(bayou_demo_lib.__version__, six.__version__)\n"
    )
    result = bayou.run(Env.from_script(path), ["python", str(path)])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2.0 1.16.0"


@pytest.mark.slow
def test_pyproject_with_tool_pixi_builds(store, conda_channel, tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        f'[project]\nname = "demo"\ndependencies = ["six==1.16.0"]\n\n'
        f'[tool.pixi.workspace]\nchannels = ["{conda_channel}"]\n\n'
        '[tool.pixi.dependencies]\nbayou-demo-lib = "==1.0"\n'
    )
    env = Env.from_file(tmp_path / "pyproject.toml")
    result = bayou.run(env, ["python", "-c", "import bayou_demo_lib, six; print('ok')"])
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
