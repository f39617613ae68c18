"""GPU-ready envs: the virtual packages (``__cuda``, ``__glibc``, ...) a conda build saw
and needed are in its record, and ``CONDA_OVERRIDE_CUDA`` builds a GPU env on a machine
without a GPU. The test channel's ``bayou-demo-gpu`` depends on ``__cuda >=12``; the
test machines have no GPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

import bayou
from bayou import Env, ProvisionError
from tests.test_lockfiles import locked, pixi_lock_v6, write_yaml

pytestmark = pytest.mark.slow


def test_a_cuda_package_fails_without_a_gpu_naming_cuda(store, conda_channel, monkeypatch):
    monkeypatch.delenv("CONDA_OVERRIDE_CUDA", raising=False)
    env = Env(conda=["bayou-demo-gpu"], channels=[conda_channel])
    with pytest.raises(ProvisionError) as info:
        bayou.provision(env)
    assert info.value.package == "bayou-demo-gpu"
    assert "__cuda >=12" in str(info.value)
    assert "CONDA_OVERRIDE_CUDA=" in str(info.value)  # the way out, named
    assert store.list() == []


def test_conda_override_cuda_builds_a_gpu_env_and_the_record_says_so(
    store, store_root, conda_channel, monkeypatch
):
    monkeypatch.setenv("CONDA_OVERRIDE_CUDA", "12.4")
    env = Env(conda=["bayou-demo-gpu"], channels=[conda_channel], name="gpu")
    built = bayou.provision(env)
    virtual = built.record["virtual_packages"]
    assert "__cuda=12.4=0" in virtual["detected"]
    assert any(v.startswith("__glibc=") for v in virtual["detected"])
    assert virtual["required"] == ["__cuda >=12"]
    assert virtual["overrides"] == {"CONDA_OVERRIDE_CUDA": "12.4"}
    assert (built.prefix / "share" / "bayou-demo-gpu" / "README").is_file()
    # `bayou env show` shows them; the env's own lock records them too.
    shown = subprocess.run(
        [sys.executable, "-m", "bayou.cli", "env", "show", "gpu"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert json.loads(shown.stdout)["virtual_packages"]["required"] == ["__cuda >=12"]
    lock = yaml.safe_load((built.prefix / ".bayou" / "conda-lock.yml").read_text())
    assert "__cuda=12.4=0" in lock["platforms"][0]["virtual-packages"]


def test_a_lock_needing_cuda_is_checked_against_this_machine(
    store, conda_channel, tmp_path, monkeypatch
):
    conda = locked(conda_channel, ("bayou-demo-gpu", "1.0"))
    env = Env.from_file(write_yaml(tmp_path / "pixi.lock", pixi_lock_v6(conda_channel, conda)))
    monkeypatch.delenv("CONDA_OVERRIDE_CUDA", raising=False)
    with pytest.raises(ProvisionError) as info:
        bayou.provision(env)
    assert "needs the virtual package __cuda >=12 (no __cuda here)" in str(info.value)
    assert info.value.package.startswith("bayou-demo-gpu==1.0=")
    monkeypatch.setenv("CONDA_OVERRIDE_CUDA", "12.4")
    built = bayou.provision(env)
    assert built.record["virtual_packages"]["required"] == ["__cuda >=12"]
    monkeypatch.setenv("CONDA_OVERRIDE_CUDA", "11.8")  # too old: a new store would refuse
    with pytest.raises(ProvisionError, match=r"this machine has __cuda=11.8"):
        bayou.provision(env, store=tmp_path / "other-store")
