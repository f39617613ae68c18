"""Provisioning under faults and concurrency (issue 6, provisioning half).

Real builds only: pip envs from PyPI through uv, conda envs from the local
test channel through py-rattler, provisioning processes killed with SIGKILL,
a real tmpfs that fills up, real processes racing for the same envs.

* SIGKILL at 20 moments (stages, hook points inside publishing, random times
  over the measured build duration): the store never lists a partial env,
  no tool survives its build, and the next provision succeeds.
* A damaged package-cache entry (truncated, modified in place, deleted) is
  detected and re-extracted, never linked into a new env.
* A full disk gives a ProvisionError that says "no space left on device" and
  names the build path; the store is left as it was.
* 8 processes provisioning the same 2 specs build each once; readers never
  see a half-deleted env while gc evicts it.

Set BAYOU_TEST_SEED to replay the random kill moments of a failed run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import bayou
from bayou import Env, ProvisionError
from bayou.store import Store
from tests.conftest import REPO

pytestmark = pytest.mark.slow

PIP_SPEC = {"pip": ["six==1.16.0", "packaging==24.1"]}
PIP_CHECK = "import six, packaging; print(six.__version__, packaging.__version__)"
PIP_EXPECT = "1.16.0 24.1"
CONDA_CHECK = "import bayou_demo_lib, six; print(bayou_demo_lib.__version__, six.__version__)"
CONDA_EXPECT = "1.0 1.16.0"


def conda_spec(channel: str) -> dict:
    return {"conda": ["bayou-demo-lib=1.0"], "pip": ["six==1.16.0"], "channels": [channel]}


def in_env(environment, code: str) -> str:
    result = bayou.run(environment, ["python", "-c", code])
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


# -- the victim process and how it is killed -----------------------------------------


class Victim:
    """A `tests.support.provision_victim` process and its timestamped lines."""

    def __init__(self, store: Store, spec: dict, pause_at: str | None = None) -> None:
        config = {"store": str(store.root), "pkgs": str(store.pkgs_dir), "env": spec}
        if pause_at:
            config["pause_at"] = pause_at
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.provision_victim", json.dumps(config)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[tuple[float, str | None]] = queue.Queue()
        self.seen: list[str] = []
        self._stderr: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(
            target=lambda: self._stderr.append(self.proc.stderr.read()), daemon=True
        ).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put((time.monotonic(), line.strip()))
        self.lines.put((time.monotonic(), None))

    def wait_for(self, prefix: str, timeout: float = 120) -> float | None:
        """Monotonic time the line starting with `prefix` arrived; None if the
        process ended without printing it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                at, line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {prefix!r} within {timeout} s; saw {self.seen}")
            if line is None:
                return None
            self.seen.append(line)
            if line.startswith(prefix):
                return at

    def kill(self) -> bool:
        """SIGKILL the provisioning process alone (its tools must die with it).
        True if provision() had not returned yet, i.e. the kill interrupted it."""
        alive = self.proc.poll() is None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        while True:  # what it printed before it died
            _at, line = self.lines.get(timeout=30)
            if line is None:
                break
            self.seen.append(line)
        finished = any(line.startswith("done") for line in self.seen)
        return alive and not finished and self.proc.returncode == -signal.SIGKILL

    def finish(self, timeout: float = 180) -> None:
        self.proc.wait(timeout=timeout)
        if self.proc.returncode != 0:
            time.sleep(0.2)
            raise AssertionError(f"victim failed: {''.join(self._stderr)[-3000:]}")


def processes_mentioning(text: str) -> list:
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(text in part for part in proc.info["cmdline"] or ()):
                found.append(proc)
    return found


def wait_no_tools(store: Store, timeout: float = 15) -> None:
    """The killed build's uv / rattler child die with it (PDEATHSIG)."""
    deadline = time.monotonic() + timeout
    while processes_mentioning(str(store.root)):
        if time.monotonic() > deadline:
            left = [p.info["cmdline"] for p in processes_mentioning(str(store.root))]
            raise AssertionError(f"tools outlived the killed build: {left}")
        time.sleep(0.05)


def assert_no_partial_env(store: Store, env: Env, check: str, expect: str, why: str) -> str:
    """Every directory under envs/ is a complete, working env; returns what was found."""
    listed = store.list()
    names = sorted(p.name for p in store.envs_dir.iterdir()) if store.envs_dir.is_dir() else []
    assert names == sorted(e.hash for e in listed), f"{why}: unlisted directory in envs/"
    if not listed:
        assert store.lookup(env.hash) is None
        return "absent"
    assert [e.hash for e in listed] == [env.hash], why
    environment = bayou.provision(env, store=store)  # a hit: nothing is built
    assert in_env(environment, check) == expect, why
    return "complete"


def measure_build(store: Store, spec: dict) -> float:
    """Seconds from 'ready' to 'done' of an unkilled victim build with warm
    caches (the first build fills them)."""
    for _ in range(2):
        victim = Victim(store, spec)
        started = victim.wait_for("ready")
        ended = victim.wait_for("done")
        victim.finish()
        assert started is not None and ended is not None
        store.remove(Env(**spec).hash)
    return ended - started


def run_kill_plan(store: Store, spec: dict, check: str, expect: str, plan, rng) -> list[dict]:
    """Kill a victim at each planned moment; after each, check the store and
    provision successfully. Returns one report row per kill point."""
    env = Env(**spec)
    rows = []
    for point in plan:
        kind, where, extra = point["kind"], point["where"], point.get("extra", 0.0)
        if point.get("cold") == "uv":
            shutil.rmtree(store.uv_cache, ignore_errors=True)
        if point.get("cold") == "conda":
            shutil.rmtree(store.conda_cache, ignore_errors=True)
        for _attempt in range(4):
            victim = Victim(store, spec, pause_at=where if kind == "hook" else None)
            if kind == "time":
                start = victim.wait_for("ready")
                delay = extra
                time.sleep(max(0.0, start + delay - time.monotonic()))
            else:
                at = victim.wait_for("hook " if kind == "hook" else f"stage {where}")
                assert at is not None, f"{point}: the build never reached it: {victim.seen}"
                delay = rng.uniform(0, extra)
                time.sleep(delay)
            landed = victim.kill()
            if landed:
                break
            # The build finished before the timer fired: try an earlier moment.
            store.remove(env.hash)
            extra = rng.uniform(0, extra * 0.7)
        assert landed, f"{point}: could not kill the build before it finished"
        wait_no_tools(store)
        why = f"after a kill at {kind} {where} +{delay:.3f}s (seed {rng.seed_value})"
        state = assert_no_partial_env(store, env, check, expect, why)
        last = victim.seen[-1] if victim.seen else ""
        rebuilt = bayou.provision(env, store=store)
        assert in_env(rebuilt, check) == expect, why
        assert list(store.builds_dir.iterdir()) == [], why
        assert list((store.root / "trash").iterdir()) == [], why
        rows.append(
            {"kill": f"{kind} {where}", "delay": round(delay, 3), "last": last, "env": state}
        )
        store.remove(env.hash)
    return rows


class SeededRandom(random.Random):
    def __init__(self) -> None:
        self.seed_value = int(os.environ.get("BAYOU_TEST_SEED") or time.time_ns() % 2**32)
        super().__init__(self.seed_value)


def test_sigkill_at_20_moments_leaves_no_partial_env(store_root, tmp_path, conda_channel):
    store = Store(store_root, pkgs_dir=tmp_path / "pkgs")  # private caches: can be made cold
    rng = SeededRandom()
    pip_seconds = measure_build(store, PIP_SPEC)
    conda_seconds = measure_build(store, conda_spec(conda_channel))
    pip_plan = [
        {"kind": "stage", "where": "venv", "extra": 0.05},
        {"kind": "stage", "where": "pip 0", "extra": 0.15, "cold": "uv"},  # downloading
        {"kind": "stage", "where": "pip 0", "extra": 0.3},
        {"kind": "stage", "where": "publish", "extra": 0.01},
        {"kind": "hook", "where": "before-rename"},
        {"kind": "hook", "where": "after-rename"},
    ] + [
        {"kind": "time", "where": "random", "extra": rng.uniform(0, pip_seconds)} for _ in range(4)
    ]
    conda_plan = [
        {"kind": "stage", "where": "solve 0", "extra": 0.05},
        {"kind": "stage", "where": "link 0", "extra": 0.3, "cold": "conda"},  # fetch + extract
        {"kind": "stage", "where": "link 1", "extra": 0.3},
        {"kind": "stage", "where": "pip 0", "extra": 0.3},
        {"kind": "stage", "where": "publish", "extra": 0.01},
        {"kind": "hook", "where": "before-rename"},
        {"kind": "hook", "where": "after-rename"},
    ] + [
        {"kind": "time", "where": "random", "extra": rng.uniform(0, conda_seconds)}
        for _ in range(3)
    ]
    rows = run_kill_plan(store, PIP_SPEC, PIP_CHECK, PIP_EXPECT, pip_plan, rng)
    rows += run_kill_plan(
        store, conda_spec(conda_channel), CONDA_CHECK, CONDA_EXPECT, conda_plan, rng
    )
    report = {
        "seed": rng.seed_value,
        "build_seconds": {"pip": round(pip_seconds, 2), "conda": round(conda_seconds, 2)},
        "kill_points": len(rows),
        "failures": 0,
        "rows": rows,
    }
    print("KILL-REPORT " + json.dumps(report))
    assert len(rows) == 20
    # The plan reached inside every phase: some kills left nothing, the
    # after-rename ones left a complete env.
    assert {r["env"] for r in rows} == {"absent", "complete"}


# -- a damaged package cache -------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cached_file(cache: Path, package: str, suffix: str) -> tuple[Path, dict]:
    """A file of an extracted package in the conda cache and its paths.json entry."""
    (pkg_dir,) = [p for p in cache.glob(f"{package}-*") if p.is_dir()]
    paths = json.loads((pkg_dir / "info" / "paths.json").read_text())["paths"]
    (entry,) = [e for e in paths if e["_path"].endswith(suffix)]
    return pkg_dir / entry["_path"], entry


def _damage(path: Path, how: str) -> None:
    if how == "truncated":
        os.truncate(path, path.stat().st_size // 2)
    elif how == "modified":  # same size: only a hash check sees it
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x20
        with open(path, "r+b") as fh:
            fh.write(data)
    else:
        path.unlink()


@pytest.mark.parametrize("how", ["truncated", "modified", "deleted"])
def test_corrupted_conda_cache_entry_is_repaired_not_linked(
    store_root, tmp_path, conda_channel, how
):
    store = Store(store_root, pkgs_dir=tmp_path / "pkgs")
    env = Env(conda=["bayou-demo-lib=1.0"], channels=[conda_channel])
    bayou.provision(env, store=store)
    py = sys.version_info
    damaged = [
        _cached_file(store.conda_cache, "bayou-demo-lib", "bayou_demo_lib/__init__.py"),
        _cached_file(
            store.conda_cache, "python", f"lib/python{py.major}.{py.minor}/json/decoder.py"
        ),
    ]
    for path, _entry in damaged:
        _damage(path, how)
    # (The env built before shares those files through hard links: it is
    # damaged too, as any hard-linked install would be; rebuild it.)
    assert store.remove(env.hash)
    rebuilt = bayou.provision(env, store=store)
    code = "import json, bayou_demo_lib; print(bayou_demo_lib.__version__, json.loads('[1]'))"
    assert in_env(rebuilt, code) == "1.0 [1]"
    for path, entry in damaged:
        assert _sha256(path) == entry["sha256"], f"{path} was not repaired in the cache"
        relative = Path(entry["_path"])
        if relative.parts[0] == "site-packages":  # noarch python: relinked
            relative = Path("lib", f"python{py.major}.{py.minor}", *relative.parts)
        installed = rebuilt.prefix / relative
        assert _sha256(installed) == entry["sha256"], f"a damaged {relative} was linked"
        assert installed.stat().st_ino == path.stat().st_ino  # still a hard link


def _record_sha(site: Path, dist_info: str, name: str) -> str:
    """The sha256 (hex) RECORD gives for `name` inside site-packages."""
    import base64

    for line in (site / dist_info / "RECORD").read_text().splitlines():
        path, digest, _size = line.rsplit(",", 2)
        if path == name:
            return base64.urlsafe_b64decode(digest[len("sha256=") :] + "==").hex()
    raise AssertionError(f"{name} not in RECORD")


@pytest.mark.parametrize("how", ["truncated", "modified", "deleted"])
def test_corrupted_uv_cache_entry_is_repaired_not_linked(store_root, tmp_path, how):
    store = Store(store_root, pkgs_dir=tmp_path / "pkgs")
    env = Env(pip=["six==1.16.0"])
    built = bayou.provision(env, store=store)
    (site,) = built.prefix.glob("lib/python3*/site-packages")
    expected = _record_sha(site, "six-1.16.0.dist-info", "six.py")
    (cached,) = [
        p
        for p in store.uv_cache.rglob("six.py")
        if p.stat().st_ino == (site / "six.py").stat().st_ino
    ]
    _damage(cached, how)
    assert store.remove(env.hash)
    rebuilt = bayou.provision(env, store=store)
    assert in_env(rebuilt, "import six; print(six.__version__)") == "1.16.0"
    installed = next(rebuilt.prefix.glob("lib/python3*/site-packages")) / "six.py"
    assert _sha256(installed) == expected, "a damaged six.py was linked"
    # The damaged copy is gone from uv's cache; the env links a good one.
    assert all(_sha256(p) == expected for p in store.uv_cache.rglob("six.py"))


@pytest.mark.parametrize(
    "variable", ["BAYOU_CONDA_CACHE_VALIDATION", "BAYOU_PIP_CACHE_VALIDATION"]
)
def test_bad_cache_validation_setting_is_named(
    store_root, tmp_path, conda_channel, monkeypatch, variable
):
    monkeypatch.setenv(variable, "paranoid")
    store = Store(store_root, pkgs_dir=tmp_path / "pkgs")
    if variable.startswith("BAYOU_CONDA"):
        env = Env(conda=["bayou-demo-lib=1.0"], channels=[conda_channel])
    else:
        env = Env(pip=["six==1.16.0"])
    with pytest.raises(ProvisionError, match=f"{variable}='paranoid'"):
        bayou.provision(env, store=store)
    assert store.list() == [] and list(store.builds_dir.iterdir()) == []


# -- a full disk ---------------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """A real tmpfs of `size` at `path` (needs CAP_SYS_ADMIN: root or a test VM)."""
    path.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Take all but `leave` bytes of the disk with one ballast file."""
    st = os.statvfs(disk)
    ballast = disk / "ballast"
    with open(ballast, "wb") as fh:
        fh.truncate(0)
        chunk = b"\0" * (1 << 20)
        todo = st.f_bavail * st.f_frsize - leave
        while todo > 0:
            todo -= fh.write(chunk[: min(len(chunk), todo)])
    return ballast


def snapshot(store: Store) -> dict[str, list[str]]:
    def rel(root: Path) -> list[str]:
        if not root.is_dir():
            return []
        return sorted(str(p.relative_to(root)) for p in root.rglob("*"))

    return {
        "envs": rel(store.envs_dir),
        "builds": rel(store.builds_dir),
        "trash": rel(store.root / "trash"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "pip-into-build",  # uv copies a wheel's files into the build dir
        "conda-into-build",  # rattler copies the python package into the build dir
        "conda-into-cache",  # rattler extracts the python package into a full cache
    ],
)
def test_full_disk_gives_a_clear_error_and_leaves_the_store(
    tmp_path, shared_pkgs, conda_channel, case
):
    with small_disk(tmp_path / "disk", "48m") as disk:
        pkgs = disk / "pkgs" if case == "conda-into-cache" else tmp_path / "pkgs"
        if case.startswith("pip"):
            pkgs = shared_pkgs  # uv's cache: downloads once per machine
        store = Store(disk / "store", pkgs_dir=pkgs)
        # A store that already holds an env: it must come out untouched.
        before_env = bayou.provision(Env(pip=["six==1.16.0"]), store=store)
        before = snapshot(store)
        ballast = fill(disk, leave=3 << 20)
        if case.startswith("pip"):
            env = Env(pip=["setuptools==75.1.0"])  # ~7 MiB once installed
        else:
            env = Env(conda=["bayou-demo-lib=2.0"], channels=[conda_channel])
        with pytest.raises(ProvisionError) as info:
            bayou.provision(env, store=store)
        message = str(info.value)
        assert message.startswith("no space left on device"), message
        assert str(store.builds_dir) in message  # names where it was building
        if case == "conda-into-cache":
            assert str(pkgs) in message
        assert snapshot(store) == before
        assert in_env(before_env, "import six; print(six.__version__)") == "1.16.0"
        # Room again: the same store (and cache) build the env.
        ballast.unlink()
        built = bayou.provision(env, store=store)
        assert in_env(built, "print('ok')") == "ok"
        assert sorted(e.hash for e in store.list()) == sorted([before_env.hash, env.hash])
        assert list(store.builds_dir.iterdir()) == []


# -- concurrency ---------------------------------------------------------------------------

MANY = textwrap.dedent(
    """
    import json, os, sys, time, bayou
    store = bayou.Store(sys.argv[1], pkgs_dir=sys.argv[2])
    specs = [json.loads(s) for s in sys.argv[4:]]
    print("ready", flush=True)
    while not os.path.exists(sys.argv[3]):
        time.sleep(0.005)
    answer = {}
    for spec in specs:
        env = bayou.Env(**spec)
        stages = []
        built = bayou.provision(env, store=store, progress=lambda e: stages.append(e.stage))
        answer[env.hash] = {"prefix": str(built.prefix), "built": "done" in stages}
    print(json.dumps(answer), flush=True)
    """
)


def test_8_processes_provisioning_2_specs_build_each_once(store_root, tmp_path, conda_channel):
    store = Store(store_root, pkgs_dir=tmp_path / "pkgs")
    specs = [
        {"pip": ["six==1.16.0"]},
        {"conda": ["bayou-demo-lib=2.0"], "channels": [conda_channel]},
    ]
    go = tmp_path / "go"
    procs = []
    for i in range(8):
        order = specs if i % 2 == 0 else specs[::-1]
        argv = [sys.executable, "-c", MANY, str(store.root), str(store.pkgs_dir), str(go)]
        procs.append(
            subprocess.Popen(
                argv + [json.dumps(s) for s in order], stdout=subprocess.PIPE, text=True
            )
        )
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"
    go.touch()  # all at once
    answers = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0
        answers.append(json.loads(out))
    hashes = {Env(**s).hash for s in specs}
    for env_hash in hashes:
        assert sum(a[env_hash]["built"] for a in answers) == 1, f"{env_hash} built more than once"
        assert {a[env_hash]["prefix"] for a in answers} == {str(store.env_dir(env_hash))}
    assert {e.hash for e in store.list()} == hashes
    assert list(store.builds_dir.iterdir()) == []


READER = textwrap.dedent(
    """
    import json, os, sys, time, bayou
    store = bayou.Store(sys.argv[1], pkgs_dir=sys.argv[2])
    env = bayou.Env(**json.loads(sys.argv[3]))
    expected = set(json.loads(sys.argv[4]))
    until = time.monotonic() + float(sys.argv[5])
    seen = {"complete": 0, "raced": 0, "partial": 0, "rebuilt": 0, "examples": []}

    def tree(prefix):
        found = set()
        for dirpath, dirnames, filenames in os.walk(prefix):
            for name in filenames + dirnames:
                found.add(os.path.relpath(os.path.join(dirpath, name), prefix))
        return found

    while time.monotonic() < until:
        stages = []
        environment = bayou.provision(env, store=store, progress=lambda e: stages.append(e.stage))
        seen["rebuilt"] += "done" in stages
        prefix = str(environment.prefix)
        try:
            before = os.stat(prefix).st_ino
            files = tree(prefix)
            after = os.stat(prefix).st_ino
        except FileNotFoundError:
            seen["raced"] += 1  # evicted as a whole meanwhile: never half
            continue
        if before != after:
            seen["raced"] += 1
        elif expected - files:
            seen["partial"] += 1
            seen["examples"].append(sorted(expected - files)[:5])
        else:
            seen["complete"] += 1
    print(json.dumps(seen), flush=True)
    """
)


def test_readers_never_see_a_half_deleted_env_while_gc_evicts_it(
    store_root, tmp_path, conda_channel
):
    store = Store(store_root, pkgs_dir=tmp_path / "pkgs")
    spec = {"conda": ["bayou-demo-lib=2.0"], "channels": [conda_channel]}
    env = Env(**spec)
    built = bayou.provision(env, store=store)
    expected = sorted(
        str(p.relative_to(built.prefix))
        for p in built.prefix.rglob("*")
        if ".bayou" not in p.parts and "__pycache__" not in p.parts
    )
    assert len(expected) > 500  # a real tree that takes a while to delete
    seconds = 8.0
    readers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                READER,
                str(store.root),
                str(store.pkgs_dir),
                json.dumps(spec),
                json.dumps(expected),
                str(seconds),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    evicted = 0
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        evicted += len(store.gc(max_age=0))
        time.sleep(0.05)
    results = []
    for reader in readers:
        out, _ = reader.communicate(timeout=120)
        assert reader.returncode == 0
        results.append(json.loads(out))
    print("GC-READERS", json.dumps({"evicted": evicted, "readers": results}))
    partial = sum(r["partial"] for r in results)
    assert partial == 0, [r["examples"] for r in results]
    assert evicted > 0 and sum(r["rebuilt"] for r in results) > 0  # the race was real
    assert sum(r["complete"] for r in results) > 0
    assert list((store.root / "trash").iterdir()) == []
    assert list(store.builds_dir.iterdir()) == []
