"""Locks as env specs: pixi.lock, conda-lock.yml and PEP 751 pylock.toml.

The conda packages come from the local test channel (its repodata gives the real
URLs and hashes a lock names), the pip packages from PyPI: six 1.16.0's wheel, whose
URL and sha256 are fixed forever, and pylock.toml files made by uv itself.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

import bayou
from bayou import Env, ProvisionError, SpecError
from bayou.env import conda_platform
from tests.conftest import CALLER_XY

SIX_URL = (
    "https://files.pythonhosted.org/packages/d9/5a/"
    "e7c31adbe875f2abbb91bd84cf2dc52d792b5a01506781dbcf25c91daf11/six-1.16.0-py2.py3-none-any.whl"
)
SIX_SHA256 = "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254"
BAYOU = [sys.executable, "-m", "bayou.cli"]


def channel_packages(channel: str) -> dict[tuple[str, str], dict]:
    """(name, version) -> the channel's repodata record, with its URL."""
    root = Path(urlparse(channel).path)
    found = {}
    for subdir in ("linux-64", "noarch"):
        data = json.loads((root / subdir / "repodata.json").read_text())
        for file_name, record in data["packages.conda"].items():
            found[(record["name"], record["version"])] = dict(
                record, url=f"{channel.rstrip('/')}/{subdir}/{file_name}"
            )
    return found


def locked(channel: str, *names: tuple[str, str]) -> list[dict]:
    packages = channel_packages(channel)
    python = next(r for (n, v), r in packages.items() if n == "python" and v.startswith(CALLER_XY))
    return [python] + [packages[n] for n in names]


def pixi_lock_v6(channel: str, conda: list[dict], pypi: list[dict] = (), **more_envs) -> dict:
    """A pixi.lock as pixi writes it (version 6): environments reference packages."""
    refs = [{"conda": r["url"]} for r in conda] + [{"pypi": p["pypi"]} for p in pypi]
    environments = {
        "default": {
            "channels": [{"url": channel}],
            "indexes": ["https://pypi.org/simple"],
            "packages": {conda_platform(): refs},
        },
        **more_envs,
    }
    entries = [
        {
            "conda": r["url"],
            "subdir": r["subdir"],  # pixi writes it for a local channel (not in the path)
            "sha256": r["sha256"],
            "md5": r["md5"],
            "depends": r["depends"],
            "license": r["license"],
            "size": r["size"],
            "timestamp": r["timestamp"],
        }
        for r in conda
    ]
    return {
        "version": 6,
        "environments": environments,
        "packages": entries + [dict(p) for p in pypi],
    }


SIX_ENTRY = {"pypi": SIX_URL, "name": "six", "version": "1.16.0", "sha256": SIX_SHA256}


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def in_env(env, code: str) -> str:
    result = bayou.run(env, ["python", "-c", code])
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def uv_pylock(tmp_path: Path, *requirements: str, python: str = CALLER_XY) -> Path:
    """A pylock.toml made by uv itself (`uv pip compile ... -o pylock.toml`)."""
    from bayou.provision.uv_step import uv_binary

    (tmp_path / "requirements.in").write_text("\n".join(requirements) + "\n")
    out = tmp_path / "pylock.toml"
    subprocess.run(
        [uv_binary(), "pip", "compile", "-q", "requirements.in", "-o", out.name]
        + ["--python-version", python],
        cwd=tmp_path,
        check=True,
        timeout=300,
    )
    return out


# -- reading (no build) ---------------------------------------------------------


def test_pixi_lock_identity_is_what_this_platform_installs(tmp_path, conda_channel):
    conda = locked(conda_channel, ("bayou-demo-lib", "1.0"))
    doc = pixi_lock_v6(conda_channel, conda, [SIX_ENTRY])
    env = Env.from_file(write_yaml(tmp_path / "pixi.lock", doc))
    assert env.kind == "lock" and env.lock.format == "pixi.lock"
    assert env.python.startswith(CALLER_XY + ".")
    assert env.pip == ("six==1.16.0",)
    assert {p.split("==")[0] for p in env.conda} == {"python", "bayou-demo-lib"}
    assert pickle.loads(pickle.dumps(env)) == env  # the lock travels inside the Env
    assert Env.from_dict(env.to_dict()).hash == env.hash

    # Another platform's packages and another environment don't change this env ...
    other = dict(doc)
    other["environments"] = dict(
        doc["environments"],
        gpu={"channels": [], "packages": {"osx-arm64": [{"conda": conda[1]["url"]}]}},
    )
    assert Env.from_file(write_yaml(tmp_path / "b" / "pixi.lock", other)).hash == env.hash
    # ... another build of one package does.
    changed = pixi_lock_v6(conda_channel, locked(conda_channel, ("bayou-demo-lib", "2.0")))
    assert Env.from_file(write_yaml(tmp_path / "c.lock", changed)).hash != env.hash


@pytest.mark.parametrize(
    "edit, message, entry",
    [
        (lambda d: d.update(version=3), "unsupported pixi.lock version", "3"),
        (lambda d: d["packages"][1].pop("sha256") and d["packages"][1].pop("md5"), "hash", None),
        (lambda d: d["packages"].pop(1), "its 'packages' section lacks", None),
        (lambda d: d["packages"][2].pop("sha256"), "needs a sha256", SIX_URL),
    ],
)
def test_pixi_lock_errors_name_file_line_and_entry(tmp_path, conda_channel, edit, message, entry):
    doc = pixi_lock_v6(
        conda_channel, locked(conda_channel, ("bayou-demo-lib", "1.0")), [SIX_ENTRY]
    )
    edit(doc)
    path = write_yaml(tmp_path / "pixi.lock", doc)
    with pytest.raises(SpecError) as info:
        Env.from_file(path)
    assert message in str(info.value) and info.value.file == str(path)
    assert info.value.line is not None
    if entry is not None:
        assert info.value.entry == entry


def test_pixi_lock_without_this_platform_or_environment(tmp_path, conda_channel):
    doc = pixi_lock_v6(conda_channel, locked(conda_channel))
    packages = doc["environments"]["default"]["packages"]
    packages["osx-arm64"] = packages.pop(conda_platform())
    path = write_yaml(tmp_path / "pixi.lock", doc)
    with pytest.raises(SpecError) as info:
        Env.from_file(path)
    assert f"no packages for this platform ({conda_platform()}; it has: osx-arm64)" in str(
        info.value
    )
    with pytest.raises(SpecError, match="no environment 'cuda' in this lock"):
        Env.from_file(path, environment="cuda")
    with pytest.raises(SpecError, match="environment= picks an environment of a pixi.lock"):
        Env.from_file(
            write_yaml(tmp_path / "environment.yml", {"dependencies": []}), environment="x"
        )


def test_conda_lock_main_category_for_this_platform(tmp_path, conda_channel):
    conda = locked(conda_channel, ("bayou-demo-lib", "2.0"))
    path = write_yaml(tmp_path / "conda-lock.yml", conda_lock(conda_channel, conda))
    env = Env.from_file(path)
    assert env.lock.format == "conda-lock.yml"
    assert env.pip == ("six==1.16.0",)  # the optional dev package is not installed
    doc = conda_lock(conda_channel, conda)
    doc["metadata"]["platforms"] = ["win-64"]
    with pytest.raises(SpecError, match=r"no packages for this platform"):
        Env.from_file(write_yaml(tmp_path / "x" / "conda-lock.yml", doc))


def conda_lock(channel: str, conda: list[dict]) -> dict:
    """A conda-lock.yml (conda-lock's version 1 format), main category plus a dev extra."""
    platform = conda_platform()
    packages = [
        {
            "name": r["name"],
            "version": r["version"],
            "manager": "conda",
            "platform": platform,
            "dependencies": {d.split(" ")[0]: " ".join(d.split(" ")[1:]) for d in r["depends"]},
            "url": r["url"],
            "hash": {"md5": r["md5"], "sha256": r["sha256"]},
            "category": "main",
            "optional": False,
        }
        for r in conda
    ]
    six = {
        "name": "six",
        "version": "1.16.0",
        "manager": "pip",
        "platform": platform,
        "dependencies": {},
        "url": SIX_URL,
        "hash": {"sha256": SIX_SHA256},
        "category": "main",
        "optional": False,
    }
    dev = dict(six, name="packaging", category="dev", optional=True)
    return {
        "version": 1,
        "metadata": {
            "content_hash": {platform: "0" * 64},
            "channels": [{"url": channel, "used_env_vars": []}],
            "platforms": [platform],
            "sources": ["environment.yml"],
        },
        "package": packages + [six, dev],
    }


def test_pylock_checks_the_python_and_the_platform_when_read(tmp_path):
    text = (
        'lock-version = "1.0"\ncreated-by = "hand"\nrequires-python = ">=3.8"\n\n'
        '[[packages]]\nname = "six"\nversion = "1.16.0"\n'
        'wheels = [{ url = "https://example.org/six-1.16.0-py2.py3-none-any.whl", '
        'hashes = { sha256 = "' + SIX_SHA256 + '" } }]\n\n'
        '[[packages]]\nname = "macos-only"\nversion = "1.0"\n'
        'wheels = [{ url = "https://example.org/macos_only-1.0-cp311-cp311-macosx_11_0_arm64.whl", '
        'hashes = { sha256 = "' + "0" * 64 + '" } }]\n'
    )
    path = tmp_path / "pylock.toml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        Env.from_file(path)
    assert info.value.entry == "macos-only" and info.value.line == 9
    assert "no wheel of macos-only 1.0 in the lock fits this machine" in str(info.value)
    path.write_text(text.split('\n\n[[packages]]\nname = "macos-only"')[0] + "\n")
    env = Env.from_file(path)
    assert env.python == CALLER_XY and env.pip == ("six==1.16.0",)
    assert env.replace(python="3.9").hash != env.hash  # the Python is part of the identity
    path.write_text(text.replace(">=3.8", ">=3.99"))
    with pytest.raises(SpecError, match="no Python on this machine satisfies requires-python"):
        Env.from_file(path)


# -- building (real installs) -----------------------------------------------------


@pytest.mark.slow
def test_pixi_lock_builds_exactly_as_locked(store, conda_channel, tmp_path):
    conda = locked(conda_channel, ("bayou-demo-lib", "1.0"))
    path = write_yaml(tmp_path / "pixi.lock", pixi_lock_v6(conda_channel, conda, [SIX_ENTRY]))
    env = Env.from_file(path)
    events = []
    built = bayou.provision(env, progress=events.append)
    assert built.hash == env.hash
    assert {(r["name"], r["version"], r["sha256"]) for r in built.record["conda_packages"]} == {
        (r["name"], r["version"], r["sha256"]) for r in conda
    }
    assert built.record["pip_packages"] == [{"name": "six", "version": "1.16.0"}]
    assert "locked packages" in " ".join(e.message for e in events if e.stage == "solve")
    out = in_env(
        env, "import bayou_demo_lib, six; print(bayou_demo_lib.__version__, six.__version__)"
    )
    assert out == "1.0 1.16.0"


@pytest.mark.slow
def test_conda_lock_builds(store, conda_channel, tmp_path):
    conda = locked(conda_channel, ("bayou-demo-lib", "2.0"))
    env = Env.from_file(write_yaml(tmp_path / "conda-lock.yml", conda_lock(conda_channel, conda)))
    bayou.provision(env)
    assert in_env(env, "import bayou_demo_lib, six; print(bayou_demo_lib.__version__)") == "2.0"
    out = in_env(env, "import importlib.util as u; print(u.find_spec('packaging') is None)")
    assert out == "True"  # the dev category is not installed


@pytest.mark.slow
def test_a_conda_hash_mismatch_names_the_package(store, conda_channel, tmp_path):
    conda = locked(conda_channel, ("bayou-demo-lib", "1.0"))
    doc = pixi_lock_v6(conda_channel, conda)
    doc["packages"][1]["sha256"] = "0" * 64
    with pytest.raises(ProvisionError) as info:
        bayou.provision(Env.from_file(write_yaml(tmp_path / "pixi.lock", doc)))
    assert info.value.package.startswith("bayou-demo-lib==1.0=")
    assert "hash mismatch for bayou-demo-lib-1.0-" in str(info.value)
    assert store.list() == [] and not list(store.builds_dir.iterdir())


@pytest.mark.slow
def test_a_pip_hash_mismatch_names_the_package(store, conda_channel, tmp_path):
    doc = pixi_lock_v6(conda_channel, locked(conda_channel), [dict(SIX_ENTRY, sha256="1" * 64)])
    with pytest.raises(ProvisionError) as info:
        bayou.provision(Env.from_file(write_yaml(tmp_path / "pixi.lock", doc)))
    assert info.value.package == "six==1.16.0"
    assert "Hash mismatch" in str(info.value)
    assert store.list() == []


@pytest.mark.slow
def test_pylock_made_by_uv_builds_and_checks_hashes(store, tmp_path):
    path = uv_pylock(tmp_path, "six==1.16.0", "packaging==24.1")
    env = Env.from_file(path)
    assert env.lock.format == "pylock.toml" and env.python == CALLER_XY
    built = bayou.provision(env)
    assert {p["name"] for p in built.record["pip_packages"]} == {"six", "packaging"}
    assert in_env(env, "import six, packaging; print(packaging.__version__)") == "24.1"

    path.write_text(path.read_text().replace(SIX_SHA256, "2" * 64))
    tampered = Env.from_file(path)
    assert tampered.hash != env.hash
    with pytest.raises(ProvisionError) as info:
        bayou.provision(tampered)
    assert info.value.package == "six==1.16.0" and "Hash mismatch" in str(info.value)


@pytest.mark.slow
def test_exported_pixi_lock_round_trips(store_root, conda_channel, tmp_path):
    """A solved conda + pip env, exported as pixi.lock, builds the same env again."""
    created = subprocess.run(
        [*BAYOU, "env", "create", "--conda", "bayou-demo-lib=2.0", "--pip", "six==1.16.0"]
        + ["-c", conda_channel, "--name", "solved"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert created.returncode == 0, created.stderr
    lock = tmp_path / "exported" / "pixi.lock"
    lock.parent.mkdir()
    exported = subprocess.run(
        [*BAYOU, "env", "export", "solved", "--format", "pixi.lock", "-o", str(lock)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert exported.returncode == 0, exported.stderr
    assert SIX_SHA256 in lock.read_text()  # the pip part, with the wheel's hash
    again = subprocess.run(
        [*BAYOU, "env", "create", str(lock)], capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr
    store = bayou.Store(store_root)
    first, second = (store.resolve(ref).record for ref in ("solved", again.stdout.split()[0]))
    assert second["spec"]["kind"] == "lock" and second["hash"] != first["hash"]

    def packages(record):
        conda = {
            (p["name"], p["version"], p["build"], p["sha256"]) for p in record["conda_packages"]
        }
        return conda, record["pip_packages"]

    assert packages(first) == packages(second)
    # The env built from the lock exports the same lock again.
    twice = subprocess.run(
        [*BAYOU, "env", "export", second["hash"], "--format", "pixi.lock"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert (
        Env.from_file(write_yaml(tmp_path / "twice.lock", yaml.safe_load(twice.stdout))).hash
        == (second["hash"])
    )


@pytest.mark.slow
def test_cli_builds_the_pixi_environment_asked_for(store_root, conda_channel, tmp_path):
    two = locked(conda_channel, ("bayou-demo-lib", "2.0"))
    other = pixi_lock_v6(conda_channel, two)["environments"]["default"]
    doc = pixi_lock_v6(
        conda_channel, locked(conda_channel, ("bayou-demo-lib", "1.0")), other=other
    )
    doc["packages"].append(pixi_lock_v6(conda_channel, two)["packages"][1])
    path = write_yaml(tmp_path / "project" / "pixi.lock", doc)
    created = subprocess.run(
        [*BAYOU, "env", "create", str(path), "--environment", "other"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert created.returncode == 0, created.stderr
    env = Env.from_file(path, environment="other")
    assert created.stdout.split()[0] == env.hash != Env.from_file(path).hash
    assert env.name == "project-other"
    assert in_env(env, "import bayou_demo_lib; print(bayou_demo_lib.__version__)") == "2.0"
    wrong = subprocess.run(
        [*BAYOU, "env", "create", str(path), "--environment", "nope"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert wrong.returncode == 2 and "no environment 'nope' in this lock" in wrong.stderr
