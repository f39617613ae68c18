"""`EnvPlugin(env, bundle=...)`: Dask workers that get their env from a bundle.

A real cluster started from the `dask` command line (integrations/dask's
`CliCluster`), each worker a "machine" of its own: its own BAYOU_HOME and
package caches, ``BAYOU_OFFLINE=1``, every proxy variable pointing at a closed
port and uv's index unreachable, and the conda channel the env came from
renamed away. The client makes the bundles from its own store
(`EnvPlugin.from_store`): a conda env read from a shared directory (a path)
and a pip env served over HTTP (a URL). Workers joining later get both; a
worker that cannot reach the HTTP server reports the failure for that env and
serves the other; a bundle no worker can read fails the env's tasks through
the "no worker has this env" path (`EnvUnavailableError`, with the workers'
errors). The last part also runs on an in-process cluster, without building.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytest.importorskip("distributed")

from distributed import Client, LocalCluster  # noqa: E402

import bayou  # noqa: E402
import bayou.dask  # noqa: E402
from integrations.dask import tasks  # noqa: E402
from integrations.dask.cluster import CliCluster  # noqa: E402
from tests.conftest import CALLER_XY  # noqa: E402
from tests.support.network import PROXY_VARS

pytestmark = pytest.mark.timeout(900)

CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens


@pytest.fixture
def bundle_server(tmp_path):
    """An HTTP server for a directory of bundles, on loopback."""
    shared = tmp_path / "bundles"
    shared.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(shared))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.directory = shared  # type: ignore[attr-defined]
    server.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    yield server
    server.shutdown()
    server.server_close()


def machine(root: Path, name: str, *, reaches_http: bool = True) -> dict[str, str]:
    """A worker's environment: a store and caches of its own, no network but loopback."""
    environ = {
        "BAYOU_HOME": str(root / name / "store"),
        "BAYOU_PKGS_DIR": str(root / name / "pkgs"),
        "BAYOU_OFFLINE": "1",
        "UV_INDEX_URL": f"{CLOSED}/simple",
        "NO_PROXY": "127.0.0.1,localhost" if reaches_http else "",
        "no_proxy": "127.0.0.1,localhost" if reaches_http else "",
    }
    environ.update(dict.fromkeys(PROXY_VARS, CLOSED))
    return environ


def offered_by(client: Client, name: str, resource: str, timeout: float = 300) -> str:
    """The address of worker `name` once it offers `resource`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = client.scheduler_info()["workers"]
        address = next((a for a, w in workers.items() if w.get("name") == name), None)
        if address and workers[address]["resources"].get(resource):
            return address
        time.sleep(0.5)
    raise AssertionError(f"worker {name} never offered {resource}")


def state_of(client: Client, key: str, address: str, timeout: float = 300) -> str:
    """What worker `address` reported for env `key`, once it is past provisioning."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = bayou.dask.status(client).get(key, {}).get(address, "")
        if state and state != "provisioning":
            return state
        time.sleep(0.5)
    raise AssertionError(f"{address} never finished setting up {key}")


@pytest.mark.slow
def test_offline_workers_run_envs_unpacked_from_bundles_the_client_made(
    store_root, conda_channel, bundle_server, tmp_path
):
    # The client's store: the envs are built there (the channel copy is then renamed
    # away, PyPI is never reachable from the workers), and packed by from_store.
    channel = tmp_path / "channel"
    shutil.copytree(urlparse(conda_channel).path, channel)
    conda_env = bayou.Env(
        conda=[f"python={CALLER_XY}", "bayou-demo-lib=2.0"],
        pip=["packaging==24.1"],
        channels=[channel.as_uri()],
        name="bundled-conda",
    )
    pip_env = bayou.Env(pip=["packaging==21.3"], name="bundled-pip")
    shared = bundle_server.directory
    by_path = bayou.dask.EnvPlugin.from_store(conda_env, shared)
    by_url = bayou.dask.EnvPlugin.from_store(pip_env, shared, url=bundle_server.url)
    assert by_path.bundle == str(shared / f"bayou-{conda_env.hash}.tar.gz")
    assert by_url.bundle == f"{bundle_server.url}/bayou-{pip_env.hash}.tar.gz"
    again = bayou.dask.EnvPlugin.from_store(conda_env, shared)  # the bundle is reused
    assert again.bundle == by_path.bundle
    os.rename(channel, tmp_path / "channel-gone")
    gone = bayou.dask.EnvPlugin(
        bayou.Env(pip=["packaging==20.9"], name="bundle-gone"),
        bundle=f"{bundle_server.url}/no-such-bundle.tar.gz",
    )

    root = tmp_path / "machines"
    base = {k: v for k, v in os.environ.items() if k not in ("BAYOU_HOME", "BAYOU_PKGS_DIR")}
    with CliCluster(tmp_path / "run", base) as cluster:
        address = cluster.start_scheduler()
        for name in ("w1", "w2"):
            cluster.start_worker(name, environ=machine(root, name))
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            for plugin in (by_path, by_url):
                client.register_plugin(plugin)
            with pytest.raises(bayou.BundleError, match="cannot read the bundle http://.*404"):
                client.register_plugin(gone)
            status = bayou.dask.status(client)
            print(status)
            for key in ("bundled-conda", "bundled-pip"):
                assert sorted(status[key].values()) == ["ready (unpacked here)"] * 2, status
            assert all(
                s.startswith("failed: BundleError: cannot read the bundle http://127.0.0.1:")
                and "404" in s
                for s in status["bundle-gone"].values()
            ), status

            # each worker runs each env from its own store
            for name in ("w1", "w2"):
                for env, version in ((conda_env, "24.1"), (pip_env, "21.3")):
                    res = client.submit(
                        tasks.probe, name, workers=[name], pure=False, **bayou.dask.env(env)
                    ).result(timeout=120)
                    assert res["packaging"] == version
                    assert res["prefix"] == str(root / name / "store" / "envs" / env.hash)

            # a worker joining later gets both; one that cannot reach the HTTP server
            # serves the conda env (a path) and reports the pip env's failure
            cluster.start_worker("late", environ=machine(root, "late"))
            cluster.start_worker("cut-off", environ=machine(root, "cut-off", reaches_http=False))
            late = offered_by(client, "late", bayou.dask.resource_name("bundled-pip"))
            cut_off = offered_by(client, "cut-off", bayou.dask.resource_name("bundled-conda"))
            assert state_of(client, "bundled-conda", late) == "ready (unpacked here)"
            failed = state_of(client, "bundled-pip", cut_off)
            print(failed)
            assert failed.startswith("failed: BundleError: cannot read the bundle http://")
            res = client.submit(
                tasks.probe, "late", workers=[late], pure=False, **bayou.dask.env(pip_env)
            ).result(timeout=120)
            assert res["prefix"] == str(root / "late" / "store" / "envs" / pip_env.hash)
            res = client.submit(
                tasks.probe, "cut", workers=[cut_off], pure=False, **bayou.dask.env(conda_env)
            ).result(timeout=120)
            assert res["prefix"] == str(root / "cut-off" / "store" / "envs" / conda_env.hash)

            # an env no worker could unpack: its tasks fail, naming the workers' errors
            bayou.dask.watch(client, timeout=2, interval=0.5)
            lost = client.submit(tasks.probe, "lost", pure=False, **bayou.dask.env("bundle-gone"))
            error = lost.exception(timeout=120)
            assert isinstance(error, bayou.dask.EnvUnavailableError), repr(error)
            assert "cannot read the bundle" in str(error) and "404" in str(error), str(error)


def test_a_bundle_no_worker_can_read_fails_its_tasks_through_the_watchdog(store_root, tmp_path):
    """In process, nothing to build: the bundle's path does not exist."""
    env = bayou.Env(pip=["packaging==21.3"], name="unreadable")
    plugin = bayou.dask.EnvPlugin(env, bundle=tmp_path / "nowhere" / "env.tar.gz")
    assert plugin.bundle == str(tmp_path / "nowhere" / "env.tar.gz")
    with (
        LocalCluster(
            n_workers=1, processes=False, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        with pytest.raises(bayou.BundleError, match="cannot read the bundle "):
            client.register_plugin(plugin)  # raises the first worker's error
        (state,) = bayou.dask.status(client)["unreadable"].values()
        assert state.startswith("failed: BundleError: cannot read the bundle ")
        assert "No such file or directory" in state
        bayou.dask.watch(client, timeout=1, interval=0.2)
        future = client.submit(tasks.probe, "x", pure=False, **bayou.dask.env(env))
        error = future.exception(timeout=60)
        assert isinstance(error, bayou.dask.EnvUnavailableError)
        assert "'unreadable'" in str(error) and "cannot read the bundle" in str(error)
    assert not (store_root / "envs").exists() or not list((store_root / "envs").iterdir())
