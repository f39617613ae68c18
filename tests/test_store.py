"""The store: publication, lookup, removal and garbage collection."""

from __future__ import annotations

import os
import time

import pytest

from bayou.store import Store


def fake_build(store: Store, env_hash: str, size: int = 100) -> None:
    """Publish a directory the way a build does (no tool needed to test the store)."""
    with store.lock(env_hash):
        build = store.new_build_dir(env_hash)
        (build / "payload").write_bytes(b"x" * size)
        store.publish(build, env_hash, {"hash": env_hash, "size": size, "spec": {}})


def test_publish_and_lookup(tmp_path):
    store = Store(tmp_path)
    assert store.lookup("abc") is None
    fake_build(store, "abc")
    assert store.lookup("abc")["hash"] == "abc"
    assert [e.hash for e in store.list()] == ["abc"]
    assert list(store.builds_dir.iterdir()) == []


def test_directory_without_record_is_never_used_and_is_cleaned(tmp_path):
    store = Store(tmp_path)
    (store.env_dir("half")).mkdir(parents=True)
    (store.builds_dir).mkdir(parents=True, exist_ok=True)
    (store.builds_dir / "half-dead").mkdir()
    assert store.lookup("half") is None and store.list() == []
    with store.lock("half"):
        store.new_build_dir("half")
    assert not store.env_dir("half").exists()
    assert not (store.builds_dir / "half-dead").exists()


def test_remove_and_resolve(tmp_path):
    store = Store(tmp_path)
    fake_build(store, "aaaa1111")
    fake_build(store, "aaaa2222")
    with pytest.raises(KeyError, match="ambiguous"):
        store.resolve("aaaa")
    assert store.resolve("aaaa1").hash == "aaaa1111"
    assert store.remove("aaaa1111") is True
    assert store.remove("aaaa1111") is False
    assert [e.hash for e in store.list()] == ["aaaa2222"]
    assert not any((tmp_path / "trash").iterdir())


def test_gc_by_age_then_size_evicts_least_recently_used(tmp_path):
    store = Store(tmp_path)
    now = time.time()
    for i, age_days in enumerate([0, 1, 2, 40]):
        fake_build(store, f"env{i}", size=1000)
        used = store.env_dir(f"env{i}") / ".bayou" / "used"
        os.utime(used, (now - age_days * 86400, now - age_days * 86400))
    dry = store.gc(max_age=30 * 86400, dry_run=True)
    assert [e.hash for e in dry] == ["env3"] and len(store.list()) == 4
    gone = store.gc(max_age=30 * 86400, max_size=2000)
    assert [e.hash for e in gone] == ["env3", "env2"]
    assert [e.hash for e in store.list()] == ["env0", "env1"]


def test_lock_times_out(tmp_path):
    store = Store(tmp_path)
    with store.lock("x"):
        import subprocess
        import sys

        code = (
            "import sys; from bayou.store import Store\n"
            "try:\n"
            "    with Store(sys.argv[1]).lock('x', timeout=0.3): print('got')\n"
            "except TimeoutError: print('timeout')\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True
        )
        assert out.stdout.strip() == "timeout"


def test_default_root_honours_bayou_home(monkeypatch, tmp_path):
    monkeypatch.setenv("BAYOU_HOME", str(tmp_path / "h"))
    assert Store().root == tmp_path / "h"
    monkeypatch.delenv("BAYOU_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert Store().root == tmp_path / "c" / "bayou"
