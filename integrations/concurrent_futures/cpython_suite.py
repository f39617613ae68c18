"""Run CPython's own ProcessPoolExecutor tests against another executor.

The tests are CPython's `test.test_concurrent_futures` for the *running* interpreter, found
or fetched at run time, never copied into this repository. The flow:

1. `locate_suite()` finds the suite. In order: `$BAYOU_CF_SUITE_DIR` (a directory holding
   `test_concurrent_futures.py` or the `test_concurrent_futures/` package, such as a CPython
   checkout's `Lib/test`), the interpreter's own `test` package, a copy cached under
   `~/.cache/bayou-tests/cpython-testsuite/X.Y/`, and last Debian's
   `libpythonX.Y-testsuite` package: `apt-get download` (with the system's package lists,
   then with private lists filled by an unprivileged `apt-get update` in the cache), the
   suite's files read out of the .deb in Python. Nothing outside the cache is changed.
2. A fetched suite lives in an *overlay*: `<cache>/.../overlay/test/__init__.py` sets the
   package's `__path__` to the overlay and then the interpreter's own `test` directory, so
   `test.support` is the running interpreter's and only the missing modules come from
   Debian. `load_suite()` puts the overlay first on `sys.path` (spawned workers inherit it, as
   they must import `test.test_concurrent_futures` to unpickle the test functions), imports
   the suite (a module in 3.11, a package in 3.12+) and selects the process-pool test cases:
   the classes generated from the `ProcessPool{Fork,Forkserver,Spawn}Mixin` mixins.
3. `make_executor_type()` resolves the target (`$BAYOU_CF_EXECUTOR`, `module:qualname`,
   default `bayou:EnvExecutor`) and, when `$BAYOU_CF_ENV_FACTORY` names a callable, a
   subclass of it that passes `env=factory()` to every constructor call.
4. `Session` swaps the executor into the suite: each selected class's `executor_type`, the
   suite modules' `futures` global (a stand-in for `concurrent.futures` whose
   `ProcessPoolExecutor` is the target, for the tests that name it directly), and the
   `assert_python_ok` helper, whose `-c` scripts get a prelude that installs the same target
   into the child interpreter's `concurrent.futures` (the scripts do
   `from concurrent.futures import <executor_type.__name__>`) and finds the overlay.
5. `Session.run(case_id)` runs one CPython test in the main thread (as regrtest does; some
   tests install signal handlers) under a time limit: a watchdog interrupts an overrun with
   SIGUSR1, so a hung executor fails that test and the run goes on. unittest's module and
   class fixtures are set up once per session. It returns an `Outcome`.

Only the spawn variants run: bayou's workers are always fresh interpreters. `SKIPS` lists
the spawn tests that check CPython internals; README.md's table is generated from it
(`python -m integrations.concurrent_futures.cpython_suite readme`).
"""

from __future__ import annotations

import _thread
import argparse
import concurrent.futures
import concurrent.futures.process
import contextlib
import functools
import hashlib
import importlib
import io
import os
import pkgutil
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import threading
import time
import traceback
import types
import unittest
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

SUITE_MODULE = "test.test_concurrent_futures"
DEFAULT_EXECUTOR = "bayou:EnvExecutor"

ENV_EXECUTOR = "BAYOU_CF_EXECUTOR"
ENV_ENV_FACTORY = "BAYOU_CF_ENV_FACTORY"
ENV_SUITE_DIR = "BAYOU_CF_SUITE_DIR"
ENV_TIMEOUT = "BAYOU_CF_TIMEOUT"
ENV_NO_SKIPS = "BAYOU_CF_NO_SKIPS"
ENV_CACHE = "BAYOU_TEST_CACHE"  # shared with tests/conftest.py

DEFAULT_TIMEOUT = 90.0
START_METHODS = ("fork", "forkserver", "spawn")
SPAWN_ONLY_REASON = (
    "bayou workers are fresh interpreters; mp_context start method is accepted but not used"
)

#: Spawn tests that check CPython internals rather than Executor behaviour. A key is
#: "Class.test_name", where Class is either the generated class
#: (ProcessPoolSpawnProcessPoolExecutorTest) or the class that defines the test
#: (ProcessPoolExecutorTest); the defining class covers every start method and version.
#: README.md's table is generated from this dict and a test keeps the two in sync.
SKIPS: dict[str, str] = {
    "ProcessPoolShutdownTest.test_processes_terminate": (
        "Asserts CPython's spawn-on-demand policy: exactly 3 of 5 workers in the private "
        "`_processes` after 3 submissions (the submitted closure cannot even be pickled, so "
        "the tasks fail). Workers ending at shutdown is still checked by "
        "`test_context_manager_shutdown`."
    ),
    "ProcessPoolShutdownTest.test_del_shutdown": (
        "Joins the private `_executor_manager_thread`, `_call_queue` (a multiprocessing "
        "queue) and `_processes` of a deleted executor: CPython's own resources."
    ),
    "ProcessPoolShutdownTest.test_shutdown_no_wait": (
        "Joins the private `_executor_manager_thread` and `_call_queue` (a multiprocessing "
        "queue) after `shutdown(wait=False)`: CPython's own resources."
    ),
    "ProcessPoolExecutorTest.test_saturation": (
        "Counts the private `_processes` after submitting a multiprocessing semaphore's "
        "method, which cannot be pickled outside process spawning (every task fails with "
        "TypeError): only CPython's process-spawning policy is checked."
    ),
    "ProcessPoolExecutorTest.test_idle_process_reuse_one": (
        "Asserts CPython's idle-worker reuse policy (bpo-39207): one entry in the private "
        "`_processes` after three sequential tasks. How many workers a pool keeps is not "
        "part of the Executor API."
    ),
    "ProcessPoolExecutorTest.test_idle_process_reuse_multiple": (
        "Asserts CPython's idle-worker reuse policy (bpo-39207): at most three entries in "
        "the private `_processes`. How many workers a pool keeps is not part of the "
        "Executor API."
    ),
    "ProcessPoolExecutorTest.test_max_tasks_per_child_defaults_to_spawn_context": (
        "Reads the private `_mp_context`; bayou accepts `mp_context` but starts no "
        "multiprocessing processes, so there is no context to report."
    ),
    "ProcessPoolExecutorTest.test_python_finalization_error": (
        "(3.12+) Patches `threading` so that CPython's second internal thread (the queue "
        "feeder) cannot start: depends on which threads ProcessPoolExecutor starts, in "
        "which order."
    ),
    "ExecutorDeadlockTest.test_gh105829_should_not_deadlock_if_wakeup_pipe_full": (
        "(3.12+) Patches the private `_ExecutorManagerThread` and `_ThreadWakeup` classes "
        "of `concurrent.futures.process`."
    ),
    "ProcessPoolExecutorTest.test_killed_child": (
        "Expects a killed worker to break the whole pool: the next `submit` must raise "
        "`BrokenProcessPool`. bayou deliberately fails only the task that was on the "
        "killed worker (with `WorkerCrashedError`, a `BrokenProcessPool`), replaces the "
        'worker and stays usable (DESIGN.md, "Errors a user can meet").'
    ),
    "FailingInitializerMixin.test_initializer": (
        "Hands workers a `multiprocessing.Queue` through `initargs`, which multiprocessing "
        "allows only by inheritance when it starts the process itself (pickling it "
        "otherwise raises RuntimeError), and polls the private `_broken` flag."
    ),
}


class SuiteUnavailable(RuntimeError):
    """CPython's test_concurrent_futures could not be found, fetched or imported."""


class ExecutorUnavailable(RuntimeError):
    """The executor (or env factory) named by the configuration cannot be imported."""


# --------------------------------------------------------------------------- locating


@dataclass(frozen=True)
class SuiteLocation:
    """Where the suite comes from and how to make it importable."""

    origin: str  # "stdlib", "BAYOU_CF_SUITE_DIR=...", "debian:<file>.deb"
    overlay: Path | None  # put first on sys.path; None: importable as it is


def cache_root() -> Path:
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "bayou-tests")


def _version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _stdlib_test_dir() -> Path:
    return Path(os.__file__).resolve().parent / "test"


def _has_suite(test_dir: Path) -> bool:
    return (test_dir / "test_concurrent_futures.py").is_file() or (
        test_dir / "test_concurrent_futures" / "__init__.py"
    ).is_file()


_OVERLAY_INIT = '''\
"""The running interpreter's `test` package plus the modules beside this file.

Generated by integrations/concurrent_futures/cpython_suite.py: CPython's
test_concurrent_futures, fetched because this interpreter lacks it. Everything else,
test.support included, is the interpreter's own.
"""
import os

__path__ = [
    os.path.dirname(os.path.abspath(__file__)),
    os.path.join(os.path.dirname(os.path.abspath(os.__file__)), "test"),
]
'''


def _write_overlay_init(overlay: Path) -> None:
    (overlay / "test").mkdir(parents=True, exist_ok=True)
    (overlay / "test" / "__init__.py").write_text(_OVERLAY_INIT)


def locate_suite() -> SuiteLocation:
    """Find (or fetch into the cache) test_concurrent_futures for this interpreter."""
    custom = os.environ.get(ENV_SUITE_DIR)
    if custom:
        return _overlay_from_dir(Path(custom).expanduser().resolve())
    if _has_suite(_stdlib_test_dir()):
        return SuiteLocation("stdlib", None)
    version = _version()
    final = cache_root() / "cpython-testsuite" / version
    if not _has_suite(final / "overlay" / "test"):
        _fetch_from_debian(version, final)
    origin = (final / "SOURCE").read_text().strip() if (final / "SOURCE").is_file() else "?"
    return SuiteLocation(origin, final / "overlay")


def _overlay_from_dir(source: Path) -> SuiteLocation:
    if not _has_suite(source):
        raise SuiteUnavailable(
            f"{ENV_SUITE_DIR}={source} holds neither test_concurrent_futures.py nor a "
            "test_concurrent_futures/ package"
        )
    digest = hashlib.sha256(str(source).encode()).hexdigest()[:12]
    overlay = cache_root() / "cpython-testsuite" / f"custom-{digest}" / "overlay"
    shutil.rmtree(overlay, ignore_errors=True)
    _write_overlay_init(overlay)
    ignore = shutil.ignore_patterns("__pycache__")
    if (source / "test_concurrent_futures.py").is_file():
        shutil.copy2(source / "test_concurrent_futures.py", overlay / "test")
    else:
        shutil.copytree(
            source / "test_concurrent_futures",
            overlay / "test" / "test_concurrent_futures",
            ignore=ignore,
        )
    return SuiteLocation(f"{ENV_SUITE_DIR}={source}", overlay)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            import fcntl
        except ImportError:  # not POSIX: no apt either, the fetch fails below anyway
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fetch_from_debian(version: str, final: Path) -> None:
    """Download libpythonX.Y-testsuite and publish its suite files as `final/overlay`."""
    package = f"libpython{version}-testsuite"
    with _file_lock(final.parent / f".{version}.lock"):
        if _has_suite(final / "overlay" / "test"):
            return  # another process fetched it while we waited
        apt = shutil.which("apt-get")
        if apt is None:
            raise SuiteUnavailable(
                f"this interpreter ({sys.executable}, {version}) has no "
                f"{SUITE_MODULE}, and apt-get is not available to fetch Debian's {package}; "
                f"set {ENV_SUITE_DIR} to a CPython {version} checkout's Lib/test"
            )
        with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{version}-") as tmp:
            work = Path(tmp)
            deb = _apt_download(apt, package, work / "download", final.parent / "apt")
            staged = work / "staged"
            _write_overlay_init(staged / "overlay")
            count = _extract_suite(deb, version, staged / "overlay" / "test")
            if not _has_suite(staged / "overlay" / "test"):
                raise SuiteUnavailable(
                    f"{deb.name} holds no test_concurrent_futures for Python {version} "
                    f"({count} files matched)"
                )
            (staged / "SOURCE").write_text(f"debian:{deb.name}\n")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(staged, final)


def _apt_download(apt: str, package: str, workdir: Path, apt_cache: Path) -> Path:
    """`apt-get download` the package into workdir; private package lists if need be."""
    workdir.mkdir(parents=True, exist_ok=True)
    # As root, apt drops to the `_apt` user, who cannot write into our directories.
    base = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
    lists, archives = apt_cache / "lists", apt_cache / "cache"
    private = [
        *("-o", f"Dir::State::Lists={lists}"),
        *("-o", f"Dir::Cache={archives}"),
        *("-o", "Debug::NoLocking=1"),
    ]
    attempts = [
        ("the system's package lists", base),
        (f"private package lists in {lists}", base + private),
    ]
    log: list[str] = []
    for label, options in attempts:
        commands = [[apt, *options, "-q", "download", package]]
        if options is not base:
            (lists / "partial").mkdir(parents=True, exist_ok=True)
            (archives / "archives" / "partial").mkdir(parents=True, exist_ok=True)
            commands.insert(0, [apt, *options, "-q", "update"])
        for command in commands:
            proc = subprocess.run(
                command, cwd=workdir, capture_output=True, text=True, timeout=600
            )
            log.append(
                f"$ {' '.join(command)}  # {label}: exit {proc.returncode}\n"
                f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )
            if proc.returncode != 0:
                break
        debs = sorted(workdir.glob(f"{package}_*.deb"))
        if debs:
            return debs[-1]
    raise SuiteUnavailable(
        f"could not download Debian's {package} (this interpreter has no {SUITE_MODULE}); "
        f"set {ENV_SUITE_DIR} to a CPython checkout's Lib/test instead.\n" + "\n".join(log)
    )


def _ar_members(data: bytes) -> Iterator[tuple[str, bytes]]:
    """The members of an `ar` archive (a .deb is one): (name, content)."""
    if not data.startswith(b"!<arch>\n"):
        raise SuiteUnavailable("not a Debian package (no ar magic)")
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        start = pos + 60
        yield name, data[start : start + size]
        pos = start + size + (size % 2)


def _data_tar(deb: Path) -> tarfile.TarFile:
    for name, payload in _ar_members(deb.read_bytes()):
        if not name.startswith("data.tar"):
            continue
        try:
            return tarfile.open(fileobj=io.BytesIO(payload), mode="r:*")
        except tarfile.CompressionError:  # zstd before Python 3.14: let dpkg decompress
            if shutil.which("dpkg-deb") is None:
                raise SuiteUnavailable(f"cannot decompress {name} of {deb.name}") from None
            out = subprocess.run(
                ["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True
            ).stdout
            return tarfile.open(fileobj=io.BytesIO(out), mode="r:")
    raise SuiteUnavailable(f"{deb.name} has no data.tar member")


def _extract_suite(deb: Path, version: str, dest: Path) -> int:
    """Copy `usr/lib/pythonX.Y/test/test_concurrent_futures*` out of the .deb into dest."""
    prefix = f"usr/lib/python{version}/test/"
    count = 0
    with _data_tar(deb) as tar:
        for member in tar:
            name = member.name.lstrip("./") if member.name.startswith("./") else member.name
            if not (member.isfile() and name.startswith(prefix)):
                continue
            rel = name[len(prefix) :]
            parts = rel.split("/")
            if parts[0] not in ("test_concurrent_futures.py", "test_concurrent_futures"):
                continue
            if "__pycache__" in parts or ".." in parts:
                continue
            handle = tar.extractfile(member)
            assert handle is not None
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(handle.read())
            count += 1
    return count


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class Case:
    """One CPython test method of one generated process-pool class."""

    id: str  # "ProcessPoolSpawnWaitTest.test_timeout"
    cls: type[unittest.TestCase]
    method: str
    defined_in: str  # "WaitTests.test_timeout"
    skip_reason: str | None  # start method or SKIPS; None: runs


@dataclass
class Suite:
    location: SuiteLocation
    modules: list[types.ModuleType]
    cases: dict[str, Case]

    @property
    def file(self) -> str:
        return str(self.modules[0].__file__)


def _activate_overlay(overlay: Path) -> None:
    """Make `test.*` resolve through the overlay here and in spawned children."""
    entry = str(overlay)
    if entry not in sys.path:
        sys.path.insert(0, entry)
    package = sys.modules.get("test")
    if package is not None:  # the interpreter's `test` was imported already: extend it
        own = str(overlay / "test")
        if own not in package.__path__:
            package.__path__.insert(0, own)
    importlib.invalidate_caches()


def _defined_in(cls: type, method: str) -> str:
    for klass in cls.__mro__:
        if method in vars(klass):
            return f"{klass.__name__}.{method}"
    return f"{cls.__name__}.{method}"


def _skip_reason(cls: type, method: str) -> str | None:
    if cls.ctx != "spawn":  # type: ignore[attr-defined]
        return SPAWN_ONLY_REASON
    for key in (f"{cls.__name__}.{method}", _defined_in(cls, method)):
        if key in SKIPS:
            return SKIPS[key]
    return None


def load_suite(location: SuiteLocation | None = None) -> Suite:
    """Import CPython's suite for this interpreter and collect its process-pool cases."""
    location = location or locate_suite()
    if location.overlay is not None:
        _activate_overlay(location.overlay)
    try:
        importlib.import_module("test.support")
    except ImportError as exc:
        raise SuiteUnavailable(
            f"{sys.executable} has no test.support, which CPython's suite needs: {exc}"
        ) from exc
    try:
        root = importlib.import_module(SUITE_MODULE)
        modules = [root]
        if hasattr(root, "__path__"):  # 3.12+: a package of test modules
            for info in sorted(pkgutil.iter_modules(root.__path__), key=lambda i: i.name):
                modules.append(importlib.import_module(f"{SUITE_MODULE}.{info.name}"))
    except (ImportError, unittest.SkipTest) as exc:
        raise SuiteUnavailable(
            f"cannot import {SUITE_MODULE} ({location.origin}) into Python "
            f"{sys.version.split()[0]}: {type(exc).__name__}: {exc}"
        ) from exc
    loader = unittest.TestLoader()
    cases: dict[str, Case] = {}
    for module in modules:
        for obj in vars(module).values():
            if not (
                isinstance(obj, type)
                and issubclass(obj, unittest.TestCase)
                and obj.__module__ == module.__name__
                and getattr(obj, "ctx", None) in START_METHODS
            ):
                continue
            for method in loader.getTestCaseNames(obj):
                case_id = f"{obj.__name__}.{method}"
                if case_id in cases:
                    raise SuiteUnavailable(f"two tests are named {case_id}")
                cases[case_id] = Case(
                    case_id, obj, method, _defined_in(obj, method), _skip_reason(obj, method)
                )
    if not cases:
        raise SuiteUnavailable(f"{SUITE_MODULE} ({root.__file__}) has no process-pool tests")
    return Suite(location, modules, dict(sorted(cases.items())))


# --------------------------------------------------------------------------- executor


def resolve(spec: str, what: str) -> Any:
    """Import `module:qualname`; ExecutorUnavailable names `what` set it."""
    module_name, sep, qualname = spec.partition(":")
    if not sep or not module_name or not qualname:
        raise ExecutorUnavailable(f"{what}={spec!r} is not of the form 'module:qualname'")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ExecutorUnavailable(
            f"cannot import {spec!r} (from {what}): {type(exc).__name__}: {exc}"
        ) from exc
    return obj


def executor_spec_from_env() -> str:
    return os.environ.get(ENV_EXECUTOR) or DEFAULT_EXECUTOR


def env_factory_spec_from_env() -> str | None:
    return os.environ.get(ENV_ENV_FACTORY) or None


@functools.cache
def make_executor_type(executor_spec: str, env_factory_spec: str | None = None) -> type:
    """The executor class the suite runs: the target, or a subclass that injects `env=`.

    With an env factory, the factory is called once, at the first construction that does
    not pass `env=` itself, and its result is passed to every construction after that.
    The subclass keeps the target's name: CPython's subprocess scripts import the executor
    by `executor_type.__name__`.
    """
    target = resolve(executor_spec, ENV_EXECUTOR)
    if not isinstance(target, type) or not issubclass(target, concurrent.futures.Executor):
        raise ExecutorUnavailable(f"{executor_spec!r} is not a concurrent.futures.Executor")
    if not env_factory_spec:
        return target
    factory: Callable[[], Any] = resolve(env_factory_spec, ENV_ENV_FACTORY)
    made: list[Any] = []
    lock = threading.Lock()

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if "env" not in kwargs:
            with lock:
                if not made:
                    made.append(factory())
            kwargs["env"] = made[0]
        target.__init__(self, *args, **kwargs)

    return type(
        target.__name__,
        (target,),
        {
            "__init__": __init__,
            "__qualname__": target.__qualname__,
            "__module__": __name__,
            "__doc__": f"{target.__qualname__} with env= from {env_factory_spec}.",
        },
    )


def install_executor(executor_spec: str, env_factory_spec: str | None = None) -> type:
    """Make `from concurrent.futures import <name>` give the target (in a child Python)."""
    executor_type = make_executor_type(executor_spec, env_factory_spec)
    setattr(concurrent.futures, executor_type.__name__, executor_type)
    return executor_type


def _harness_import() -> tuple[str, Path]:
    """This module's importable name and the sys.path entry it is found under."""
    spec = globals().get("__spec__")
    name = spec.name if spec is not None and spec.name != "__main__" else __name__
    if name == "__main__":
        raise RuntimeError("run this module with `python -m`, not as a script")
    return name, Path(__file__).resolve().parents[name.count(".")]


class _FuturesShim(types.ModuleType):
    """`concurrent.futures` as the suite sees it: `ProcessPoolExecutor` is the target."""

    def __init__(self, executor_type: type) -> None:
        super().__init__(concurrent.futures.__name__, concurrent.futures.__doc__)
        self.ProcessPoolExecutor = executor_type

    def __getattr__(self, name: str) -> Any:
        return getattr(concurrent.futures, name)


# --------------------------------------------------------------------------- running

Status = Literal["passed", "failed", "skipped", "xfailed"]


@dataclass
class Outcome:
    status: Status
    detail: str = ""
    duration: float = 0.0


_SCRIPT_HELPERS = ("assert_python_ok", "assert_python_failure")


@dataclass
class Session:
    """The suite configured for one target executor; runs cases one at a time.

    Construction resolves the executor (raising ExecutorUnavailable) and patches the suite
    modules; `close()` runs the module and class teardowns and restores the modules.
    """

    suite: Suite
    executor_spec: str = field(default_factory=executor_spec_from_env)
    env_factory_spec: str | None = field(default_factory=env_factory_spec_from_env)
    timeout: float = field(
        default_factory=lambda: float(os.environ.get(ENV_TIMEOUT) or DEFAULT_TIMEOUT)
    )
    honour_skips: bool = field(default_factory=lambda: not os.environ.get(ENV_NO_SKIPS))
    executor_type: type = field(init=False)
    hung: list[str] = field(init=False, default_factory=list)
    _restore: list[tuple[Any, str, Any]] = field(init=False, default_factory=list)
    _modules_set_up: set[str] = field(init=False, default_factory=set)
    _classes_set_up: list[type] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.executor_type = make_executor_type(self.executor_spec, self.env_factory_spec)
        self._patch()

    # -- configuration

    def _set(self, owner: Any, name: str, value: Any) -> None:
        self._restore.append((owner, name, vars(owner).get(name, _MISSING)))
        setattr(owner, name, value)

    def subprocess_prelude(self) -> str:
        """Code put before each `-c` script the suite runs in a child interpreter."""
        module, root = _harness_import()
        paths = [str(root)]
        if self.suite.location.overlay is not None:
            paths.insert(0, str(self.suite.location.overlay))
        return textwrap.dedent(f"""\
            import sys as _bayou_sys
            _bayou_sys.path[0:0] = {paths!r}
            from {module} import install_executor as _bayou_install
            _bayou_install({self.executor_spec!r}, {self.env_factory_spec!r})
            del _bayou_sys, _bayou_install
            """)

    def _patch(self) -> None:
        import test.support

        self._set(test.support, "verbose", 0)  # as regrtest without -v: no timing prints
        shim = _FuturesShim(self.executor_type)
        prelude = self.subprocess_prelude()
        for module in self.suite.modules:
            if getattr(module, "futures", None) is concurrent.futures:
                self._set(module, "futures", shim)
            for helper in _SCRIPT_HELPERS:
                original = vars(module).get(helper)
                if callable(original):
                    self._set(module, helper, _with_prelude(original, prelude))
        for case in self.suite.cases.values():
            if vars(case.cls).get("executor_type") is not self.executor_type:
                self._set(case.cls, "executor_type", self.executor_type)

    # -- running

    def run(self, case_id: str) -> Outcome:
        case = self.suite.cases[case_id]
        if case.skip_reason is not None and (
            self.honour_skips or case.skip_reason == SPAWN_ONLY_REASON
        ):
            return Outcome("skipped", case.skip_reason)
        result = unittest.TestResult()
        test = case.cls(case.method)
        start = time.monotonic()
        stack = _call_with_time_limit(lambda: self._execute(case, test, result), self.timeout)
        duration = time.monotonic() - start
        if stack is not None:
            self.hung.append(case_id)
            _abandon(test)
            return Outcome(
                "failed",
                f"{case_id} did not finish within {self.timeout:g}s ({ENV_TIMEOUT}) and was "
                f"interrupted (its tearDown did not run). Where it was:\n{stack}",
                duration,
            )
        return _outcome(result, duration)

    def _execute(self, case: Case, test: unittest.TestCase, result: unittest.TestResult) -> None:
        try:
            module = sys.modules[case.cls.__module__]
            if module.__name__ not in self._modules_set_up:
                self._modules_set_up.add(module.__name__)
                setup = getattr(module, "setUpModule", None)
                if setup is not None:
                    setup()
            if case.cls not in self._classes_set_up:
                self._classes_set_up.append(case.cls)
                case.cls.setUpClass()
        except unittest.SkipTest as exc:
            result.addSkip(test, str(exc))
            return
        except Exception:
            result.addError(test, sys.exc_info())
            return
        test.run(result)

    def close(self) -> list[str]:
        """Tear down fixtures (with the time limit) and restore the modules; problems."""
        problems: list[str] = []

        def teardown() -> None:
            for cls in reversed(self._classes_set_up):
                try:
                    cls.tearDownClass()
                    cls.doClassCleanups()
                except Exception:
                    problems.append(traceback.format_exc())
            for name in self._modules_set_up:
                down = getattr(sys.modules.get(name), "tearDownModule", None)
                try:
                    if down is not None:
                        down()
                except Exception:
                    problems.append(traceback.format_exc())
            try:
                unittest.case.doModuleCleanups()
            except Exception:
                problems.append(traceback.format_exc())

        stack = _call_with_time_limit(teardown, self.timeout)
        if stack is not None:
            problems.append(f"module teardown interrupted after {self.timeout:g}s:\n{stack}")
        self._classes_set_up.clear()
        self._modules_set_up.clear()
        for owner, name, old in reversed(self._restore):
            if old is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, old)
        self._restore.clear()
        return problems


class _TimeLimit(KeyboardInterrupt):
    """Raised in the main thread when a case overruns: unittest lets KeyboardInterrupt
    through (its tearDown is skipped), where any other exception would become a test
    error followed by a tearDown that may hang on the same executor."""


_WATCHDOG_SIGNAL = getattr(signal, "SIGUSR1", None)


class _Watchdog:
    """Interrupts the main thread with SIGUSR1 once an armed deadline passes.

    One long-lived bare `_thread` thread, started before the first case: the suite's
    thread-leak checks (`threading_helper.threading_setup/cleanup`, which count `_thread`
    threads) then see the same count before and after every test. Its signal handler stays
    installed and raises `_TimeLimit` only while armed, so a late signal is ignored.
    """

    def __init__(self) -> None:
        self.armed = False
        self.stack = ""
        self._deadline: float | None = None
        self._cond = threading.Condition(threading.Lock())
        self._main = threading.main_thread().ident or 0
        signal.signal(_WATCHDOG_SIGNAL, self._on_signal)  # type: ignore[arg-type]
        running = _thread.allocate_lock()
        running.acquire()
        _thread.start_new_thread(self._loop, (running,))
        running.acquire()  # counted by _thread._count() from now on

    def _on_signal(self, signum: int, frame: types.FrameType | None) -> None:
        if self.armed:
            raise _TimeLimit

    def arm(self, limit: float) -> None:
        with self._cond:
            self.stack = ""
            self._deadline = time.monotonic() + limit
            self.armed = True
            self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self.armed = False
            self._deadline = None
            self._cond.notify()

    def _loop(self, running: _thread.LockType) -> None:
        running.release()
        with self._cond:
            while True:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                self._deadline = None
                frame = sys._current_frames().get(self._main)
                self.stack = "".join(traceback.format_stack(frame)) if frame else "?\n"
                signal.pthread_kill(self._main, _WATCHDOG_SIGNAL)  # type: ignore[arg-type]


_watchdog: _Watchdog | None = None


def _call_with_time_limit(fn: Callable[[], None], limit: float) -> str | None:
    """Call fn in this (main) thread; interrupt it after `limit` seconds.

    The tests run in the main thread, as under regrtest (some install SIGALRM handlers).
    The watchdog's SIGUSR1 breaks blocking waits (lock acquires included) and its handler
    raises `_TimeLimit`. Returns None when fn finished, else the main thread's stack at the
    time of the interrupt. Off the main thread or without SIGUSR1 there is no limit
    (pytest-timeout remains the backstop).
    """
    global _watchdog
    if threading.current_thread() is not threading.main_thread() or _WATCHDOG_SIGNAL is None:
        fn()
        return None
    if _watchdog is None:
        _watchdog = _Watchdog()
    _watchdog.arm(limit)
    try:
        fn()
    except _TimeLimit:
        return _watchdog.stack or "?"
    finally:
        while True:  # a signal sent just as fn returned may land here: disarm regardless
            try:
                _watchdog.disarm()
                break
            except _TimeLimit:
                continue
    return None


def _abandon(test: unittest.TestCase) -> None:
    """Best effort after an interrupted case: let its executor go without waiting."""
    executor = getattr(test, "executor", None)
    if isinstance(executor, concurrent.futures.Executor):
        with contextlib.suppress(Exception):
            executor.shutdown(wait=False, cancel_futures=True)


_MISSING = object()


def _with_prelude(helper: Callable[..., Any], prelude: str) -> Callable[..., Any]:
    @functools.wraps(helper)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        args_list = list(args)
        for index, arg in enumerate(args_list[:-1]):
            if arg == "-c":
                args_list[index + 1] = prelude + args_list[index + 1]
                break
        return helper(*args_list, **kwargs)

    return wrapper


def _outcome(result: unittest.TestResult, duration: float) -> Outcome:
    problems = [*result.errors, *result.failures]
    if problems:
        detail = "\n".join(f"{test}\n{text}" for test, text in problems)
        return Outcome("failed", detail, duration)
    if result.unexpectedSuccesses:
        return Outcome("failed", "unexpected success of an expected failure", duration)
    if result.skipped:
        return Outcome("skipped", "; ".join(reason for _, reason in result.skipped), duration)
    if result.expectedFailures:
        return Outcome("xfailed", result.expectedFailures[0][1], duration)
    return Outcome("passed", "", duration)


# --------------------------------------------------------------------------- README

README = Path(__file__).with_name("README.md")
TABLE_START = "<!-- skips-table:start (generated from SKIPS: cpython_suite.py readme) -->"
TABLE_END = "<!-- skips-table:end -->"


def skips_table() -> str:
    rows = ["| Test | Why it is skipped |", "| --- | --- |"]
    for key, reason in sorted(SKIPS.items()):
        escaped = reason.replace("|", "\\|")
        rows.append(f"| `{key}` | {escaped} |")
    return "\n".join(rows)


def readme_with_table(text: str) -> str:
    head, start, rest = text.partition(TABLE_START)
    _, end, tail = rest.partition(TABLE_END)
    if not start or not end:
        raise ValueError(f"README.md lacks the {TABLE_START} ... {TABLE_END} markers")
    return f"{head}{TABLE_START}\n{skips_table()}\n{TABLE_END}{tail}"


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m integrations.concurrent_futures.cpython_suite",
        description="CPython's ProcessPoolExecutor tests against an executor, without pytest.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("where", help="locate (or fetch) the suite and say where it is")
    sub.add_parser("list", help="list the process-pool cases and why any is skipped")
    run = sub.add_parser("run", help="run the cases")
    run.add_argument("-k", dest="pattern", default="", help="only case ids containing this")
    run.add_argument("--executor", default=None, help=f"module:qualname ({ENV_EXECUTOR})")
    run.add_argument("--no-skips", action="store_true", help=f"run SKIPS too ({ENV_NO_SKIPS})")
    readme = sub.add_parser("readme", help="regenerate the skips table in README.md")
    readme.add_argument("--check", action="store_true", help="exit 1 if it is out of date")
    args = parser.parse_args(argv)

    if args.command == "readme":
        text = README.read_text()
        new = readme_with_table(text)
        if args.check:
            return 0 if new == text else 1
        README.write_text(new)
        return 0

    started = time.monotonic()
    try:
        suite = load_suite()
    except SuiteUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"suite: {suite.file} ({suite.location.origin}), loaded in "
        f"{time.monotonic() - started:.1f}s"
    )
    if args.command == "where":
        return 0
    if args.command == "list":
        for case in suite.cases.values():
            print(f"{case.id}  [{case.skip_reason or 'runs'}]")
        return 0

    try:
        session = Session(suite, executor_spec=args.executor or executor_spec_from_env())
    except ExecutorUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.no_skips:
        session.honour_skips = False
    counts: dict[str, int] = {}
    started = time.monotonic()
    for case_id in suite.cases:
        if args.pattern not in case_id:
            continue
        outcome = session.run(case_id)
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
        if outcome.status != "skipped" or outcome.detail != SPAWN_ONLY_REASON:
            print(f"{outcome.status:8} {outcome.duration:6.2f}s {case_id}", flush=True)
        if outcome.status == "failed":
            print(textwrap.indent(outcome.detail, "    "), flush=True)
    for problem in session.close():
        print(f"teardown: {problem}")
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    print(f"{summary} in {time.monotonic() - started:.1f}s (executor {session.executor_spec})")
    return 1 if counts.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
