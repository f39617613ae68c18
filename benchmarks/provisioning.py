"""Provisioning side by side: bayou against the plain tools it drives.

Every figure is measured in this one run, on this machine, so ratios compare
like with like (same network, same disk, same caches):

* cold pip env    fresh store and an EMPTY uv cache (real downloads from PyPI)
                  bayou.provision(Env(pip=PKGS))      vs  uv venv + uv pip install
* warm pip env    fresh store, warm uv cache           (same pair)
* warm conda env  fresh store, warm conda package cache, the local test channel
                  bayou.provision(Env(conda=...))     vs  a python child running
                  rattler.solve + rattler.install (what bayou's child does)
* cache hit       the env already built
                  bayou.provision                      vs  `uv pip install` (audit
                  only) / rattler solve+install into the existing prefix (no-op)

Ratio = bayou time / plain time (lower is better; 1.0 means no overhead).
bayou pays for what the plain calls don't do: the lock, publishing by rename,
computing the activation, the record; and, on a hit, nothing at all.

    python benchmarks/provisioning.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import bayou  # noqa: E402
from bayou.provision.uv_step import uv_binary  # noqa: E402

PIP_PACKAGES = ["attrs==23.2.0", "packaging==24.1", "six==1.16.0"]
CONDA_PACKAGES = ["bayou-demo-lib=2.0", "bayou-demo-tool"]

RATTLER_SCRIPT = """
import asyncio, os, sys, rattler
channel, prefix, cache, *specs = sys.argv[1:]
async def main():
    records = await rattler.solve(
        sources=[rattler.Channel(channel)], specs=specs,
        gateway=rattler.Gateway(cache_dir=cache + "/repodata"),
        virtual_packages=rattler.VirtualPackage.detect(),
    )
    await rattler.install(records, target_prefix=prefix, cache_dir=cache + "/conda",
                          show_progress=False)
asyncio.run(main())
sys.stdout.flush()
os._exit(0)
"""


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def median_of(repeats: int, setup: Callable[[], object], fn: Callable[[object], object]) -> float:
    samples = []
    for _ in range(repeats):
        state = setup()
        samples.append(timed(functools.partial(fn, state)))
    return statistics.median(samples)


def run(argv: list[str], **env: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, env={**os.environ, **env})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (CI smoke)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    repeats = 2 if args.quick else 5
    work = Path(tempfile.mkdtemp(prefix="bayou-bench-prov-"))
    uv = uv_binary()
    python = sys.executable
    counter = iter(range(10**6))

    def fresh(name: str) -> Path:
        path = work / f"{name}-{next(counter)}"
        path.mkdir()
        return path

    def bayou_pip(pkgs_dir: Path) -> None:
        store = bayou.Store(fresh("store"), pkgs_dir=pkgs_dir)
        bayou.provision(bayou.Env(pip=PIP_PACKAGES), progress=lambda e: None, store=store)

    def plain_pip(cache: Path) -> None:
        target = fresh("venv") / "env"
        run([uv, "venv", "--quiet", "--python", python, str(target)], UV_CACHE_DIR=str(cache))
        run(
            [uv, "pip", "install", "--quiet", "--python", str(target / "bin" / "python")]
            + PIP_PACKAGES,
            UV_CACHE_DIR=str(cache),
        )

    rows: list[tuple[str, float, float, str]] = []

    # Cold: every repeat gets an empty package cache.
    cold_bayou = median_of(repeats, lambda: fresh("pkgs"), bayou_pip)
    cold_plain = median_of(repeats, lambda: fresh("uvcache") / "uv", plain_pip)
    rows.append(("cold pip env (downloads)", cold_bayou, cold_plain, "uv venv + uv pip install"))

    # Warm: one cache, filled once.
    warm_pkgs = fresh("pkgs-warm")
    bayou_pip(warm_pkgs)
    warm_bayou = median_of(repeats, lambda: warm_pkgs, bayou_pip)
    warm_plain = median_of(repeats, lambda: warm_pkgs / "uv", plain_pip)
    rows.append(("warm-cache pip env", warm_bayou, warm_plain, "uv venv + uv pip install"))

    from tests.support.conda_channel import build_channel

    channel = build_channel((f"{sys.version_info.major}.{sys.version_info.minor}",)).as_uri()
    conda_env = bayou.Env(conda=CONDA_PACKAGES, channels=[channel])

    def bayou_conda(pkgs_dir: Path) -> None:
        store = bayou.Store(fresh("store"), pkgs_dir=pkgs_dir)
        bayou.provision(conda_env, progress=lambda e: None, store=store)

    def plain_conda(cache: Path, prefix: Path | None = None) -> None:
        target = prefix or fresh("prefix") / "env"
        specs = list(conda_env.conda)
        run([python, "-c", RATTLER_SCRIPT, channel, str(target), str(cache), *specs])

    conda_pkgs = fresh("pkgs-conda")
    bayou_conda(conda_pkgs)
    conda_bayou = median_of(repeats, lambda: conda_pkgs, bayou_conda)
    conda_plain = median_of(repeats, lambda: conda_pkgs, plain_conda)
    rows.append(("warm-cache conda env", conda_bayou, conda_plain, "rattler solve + install"))

    # Cache hits.
    hit_store = bayou.Store(fresh("store-hit"), pkgs_dir=warm_pkgs)
    pip_env = bayou.Env(pip=PIP_PACKAGES)
    built = bayou.provision(pip_env, progress=lambda e: None, store=hit_store)
    hit_repeats = 50 if args.quick else 300
    hit_bayou = median_of(
        hit_repeats, lambda: None, lambda _: bayou.provision(pip_env, store=hit_store)
    )
    hit_plain = median_of(
        repeats,
        lambda: None,
        lambda _: run(
            [uv, "pip", "install", "--quiet", "--python", str(built.python)] + PIP_PACKAGES,
            UV_CACHE_DIR=str(warm_pkgs / "uv"),
        ),
    )
    rows.append(("cache hit, pip env", hit_bayou, hit_plain, "uv pip install (audit only)"))
    conda_store = bayou.Store(fresh("store-hit"), pkgs_dir=conda_pkgs)
    conda_built = bayou.provision(conda_env, progress=lambda e: None, store=conda_store)
    hit_conda = median_of(
        hit_repeats, lambda: None, lambda _: bayou.provision(conda_env, store=conda_store)
    )
    noop_conda = median_of(
        repeats, lambda: None, lambda _: plain_conda(conda_pkgs, conda_built.prefix)
    )
    rows.append(("cache hit, conda env", hit_conda, noop_conda, "rattler no-op transaction"))

    print(f"\nProvisioning, bayou vs plain tools (medians; Python {sys.version.split()[0]})\n")
    print(f"{'operation':<26} {'bayou':>10} {'plain':>10} {'ratio':>8}  plain is")
    for name, ours, theirs, what in rows:
        print(f"{name:<26} {_fmt(ours):>10} {_fmt(theirs):>10} {ours / theirs:>8.3f}  {what}")
    print("\nratio = bayou / plain (lower is better)")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                [
                    {"operation": n, "bayou_s": o, "plain_s": t, "ratio": o / t, "plain": w}
                    for n, o, t, w in rows
                ],
                indent=1,
            )
        )
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


if __name__ == "__main__":
    sys.exit(main())
