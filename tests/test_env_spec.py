"""Env: validation, canonical identity, and reading spec files."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import bayou
from bayou import Env, SpecError


def test_same_spec_written_two_ways_has_same_hash():
    a = Env(python="3.11", pip=["NumPy >=2", "requests[socks,security]"])
    b = Env(python="3.11", pip=["requests[Security,SOCKS]", "numpy>=2"])
    assert a.hash == b.hash
    c = Env(python="3.11", pip=["numpy>=2.1"])
    assert c.hash != a.hash


def test_conda_specs_are_normalised_and_python_added():
    a = Env(conda=["NumPy >= 1.26", "scipy"], python="3.11")
    b = Env(conda=["scipy", "numpy>=1.26"], python="3.11")
    assert a.hash == b.hash
    assert "python 3.11.*" in a.conda


def test_hash_is_stable_across_processes():
    code = "import bayou; print(bayou.Env(python='3.11', pip=['six==1.16'], conda=['zlib']).hash)"
    outs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
        for _ in range(2)
    }
    here = Env(python="3.11", pip=["six==1.16"], conda=["zlib"]).hash
    assert outs == {here + "\n"}


def test_env_vars_and_name_are_not_in_the_hash():
    a = Env(pip=["six"], env_vars={"A": "1"}, name="one")
    b = Env(pip=["six"], name="two")
    assert a.hash == b.hash
    assert a != b  # but they are not the same Env: variables differ


def test_env_is_immutable_and_replace_makes_a_copy():
    env = Env(pip=["six"])
    with pytest.raises(AttributeError):
        env.pip = ("x",)  # type: ignore[misc]
    other = env.replace(pip=["six", "attrs"])
    assert other.pip == ("attrs", "six") and env.pip == ("six",)


@pytest.mark.parametrize(
    "kwargs, culprit",
    [
        ({"pip": ["numpy>=>2"]}, "numpy>=>2"),
        ({"conda": ["numpy ^^ 2"]}, "numpy ^^ 2"),
        ({"python": "three"}, "three"),
        ({"env_vars": {"BAD NAME": "x"}}, "BAD NAME"),
        ({"channels": ["conda forge"], "conda": ["x"]}, "conda forge"),
    ],
)
def test_invalid_entries_name_the_culprit(kwargs, culprit):
    with pytest.raises(SpecError) as info:
        Env(**kwargs)
    assert info.value.entry == culprit
    assert culprit in str(info.value)


def test_conflicting_python_is_rejected():
    with pytest.raises(SpecError, match="contradicts"):
        Env(python="3.10", conda=["python=3.11"])


def test_environment_yml(tmp_path):
    (tmp_path / "extra.txt").write_text("attrs==23.1\n")
    path = tmp_path / "environment.yml"
    path.write_text(
        textwrap.dedent(
            """\
            name: tools
            channels:
              - conda-forge
            dependencies:
              - python=3.11
              - scikit-image=0.22   # a comment
              - pip
              - pip:
                - cellpose==3.1.0
                - -r extra.txt
            variables:
              OMP_NUM_THREADS: 1
            """
        )
    )
    env = Env.from_file(path)
    assert env.name == "tools" and env.python == "3.11"
    assert env.conda == ("python=3.11", "scikit-image=0.22")
    assert env.pip == ("attrs==23.1", "cellpose==3.1.0")
    assert dict(env.env_vars) == {"OMP_NUM_THREADS": "1"}


def test_environment_yml_errors_name_file_and_line(tmp_path):
    path = tmp_path / "environment.yml"
    path.write_text("name: x\ndependencies:\n  - numpy\n  - pip:\n    - 'requests >>= 2'\n")
    with pytest.raises(SpecError) as info:
        Env.from_file(path)
    assert info.value.file == str(path) and info.value.line == 5
    assert "requests >>= 2" in str(info.value) and f"{path}:5" in str(info.value)

    path.write_text("name: x\ndependencies:\n  - numpy\n  - [scipy\nchannels: []\n")
    with pytest.raises(SpecError) as info:
        Env.from_file(path)
    assert info.value.line == 5 and "invalid YAML" in str(info.value)

    path.write_text("name: x\ndependancies:\n  - numpy\n")
    with pytest.raises(SpecError) as info:
        Env.from_file(path)
    assert info.value.line == 2 and info.value.entry == "dependancies"


def test_requirements_txt_with_includes_and_options(tmp_path):
    (tmp_path / "base.txt").write_text("# base\nsix==1.16.0  # pinned\n")
    path = tmp_path / "requirements.txt"
    path.write_text(
        "-r base.txt\n--extra-index-url https://example.invalid/simple\n"
        "packaging \\\n  >=23\n\n# done\n"
    )
    env = Env.from_file(path)
    assert env.pip == ("packaging>=23", "six==1.16.0")
    assert env.pip_options == ("--extra-index-url https://example.invalid/simple",)
    assert not env.is_conda


def test_requirements_txt_errors(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("six\nnot a requirement!!\n")
    with pytest.raises(SpecError) as info:
        Env.from_file(path)
    assert info.value.line == 2 and info.value.entry == "not a requirement!!"
    path.write_text("-r missing.txt\n")
    with pytest.raises(SpecError, match="missing.txt"):
        Env.from_file(path)
    path.write_text("-e ./src\n")
    with pytest.raises(SpecError, match="unsupported option"):
        Env.from_file(path)


def test_pixi_toml(tmp_path):
    path = tmp_path / "pixi.toml"
    path.write_text(
        textwrap.dedent(
            """\
            [workspace]
            name = "seg"
            channels = ["conda-forge", "bioconda"]
            platforms = ["linux-64"]

            [dependencies]
            python = "3.12.*"
            numpy = ">=1.26,<2"
            samtools = { version = "*", channel = "bioconda" }

            [pypi-dependencies]
            cellpose = "==3.1.0"
            requests = { version = ">=2", extras = ["socks"] }

            [activation.env]
            MY_VAR = "1"
            """
        )
    )
    env = Env.from_file(path)
    assert env.name == "seg" and env.python == "3.12"
    assert env.channels == ("conda-forge", "bioconda")
    assert "bioconda::samtools" in env.conda and "numpy>=1.26,<2" in env.conda
    assert env.pip == ("cellpose==3.1.0", "requests[socks]>=2")
    assert dict(env.env_vars) == {"MY_VAR": "1"}


def test_pixi_toml_errors_name_the_line(tmp_path):
    path = tmp_path / "pixi.toml"
    path.write_text('[project]\nname = "x"\n\n[dependencies]\nnumpy = "^^2"\n')
    with pytest.raises(SpecError) as info:
        Env.from_file(path)
    assert info.value.line == 5 and "numpy" in str(info.value)
    path.write_text('[project\nname = "x"\n')
    with pytest.raises(SpecError, match="invalid TOML"):
        Env.from_file(path)


def test_unknown_file_type(tmp_path):
    path = tmp_path / "env.json"
    path.write_text("{}")
    with pytest.raises(SpecError, match="unknown file type"):
        Env.from_file(path)


def test_existing_and_current(tmp_path):
    cur = Env.current()
    assert cur.kind == "current" and cur.path.exists()
    env = bayou.provision(cur)
    assert env.is_current and str(env.python) == sys.executable
    with pytest.raises(SpecError, match="no such environment"):
        Env.existing(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match="no python"):
        Env.existing(tmp_path / "empty")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"conda": ["numpy"]},
        {"conda": ["python"]},
        {"conda": ["python=3.9", "numpy"]},
        {"python": "3.12", "pip": ["NumPy >=2"]},
        {"pip": ["six"], "env_vars": {"A": "1"}, "name": "n"},
    ],
)
def test_to_dict_and_back_keeps_the_identity(kwargs):
    env = Env(**kwargs)
    again = Env.from_dict(env.to_dict())
    assert again.hash == env.hash and again == env
    assert again.to_dict() == env.to_dict()


def test_envs_pickle_to_equal_envs(tmp_path):
    import pickle

    for env in (
        Env(conda=["numpy"], pip=["six"], env_vars={"A": "1"}, name="x"),
        Env.current(env_vars={"B": "2"}),
    ):
        again = pickle.loads(pickle.dumps(env))
        assert again == env and again.hash == env.hash and again.env_vars == env.env_vars
