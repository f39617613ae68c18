"""joblib's own backend-parametrized tests, re-targeted at the ``"bayou"`` backend.

The tests are `joblib/test/test_parallel.py` of the *installed* joblib (the wheel ships
it), imported at run time, never copied. The flow:

1. `load_module()` imports `bayou.joblib` first, so ``"bayou"`` is in joblib's `BACKENDS`
   when the test module computes its backend lists (`ALL_VALID_BACKENDS`,
   `RETURN_GENERATOR_BACKENDS`, ...), then imports `joblib.test.test_parallel`.
2. `select_cases()` looks at every `test_*` function's `pytest.mark.parametrize` marks.
   A test is *parametrized over backends* when a mark names a backend argument (`backend`,
   `parent_backend`, ...). It is selected when one of those lists holds a process backend,
   ``"loky"`` (a `LokyBackend` instance counts too) or bayou itself; tests that only ever
   see threading or sequential backends check joblib's thread paths, not a backend.
3. For a selected test, the backend marks are merged into one mark whose values are the
   combinations that involve bayou: ``"loky"`` (or a `LokyBackend`) in any backend slot is
   replaced by ``"bayou"`` (or a `BayouBackend`), every non-empty subset of such slots in
   turn, and combinations already naming bayou are kept; other marks (`n_jobs`,
   `return_as`, ...) stay as joblib wrote them. `OVERRIDES` corrects a value that
   states a loky-specific expectation, `SKIPS` marks a combination skipped with its reason.
4. `Case.function()` is a copy of joblib's function (same code, same module globals) with
   those marks: the pytest entry (`test_joblib_suite.py`) puts the copies in its own
   namespace and pytest collects them as usual.

README.md's table of skips is generated from `SKIPS` (``python -m
integrations.joblib.suite readme``); `test_harness.py` fails when the two differ.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import sys
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SUITE_MODULE = "joblib.test.test_parallel"
BACKEND_ARGS = frozenset(
    {"backend", "parent_backend", "child_backend", "outer_backend", "inner_backend"}
)
#: Marks of joblib's test module that mean nothing to this repository's pytest setup.
DROPPED_MARKS = frozenset({"thread_unsafe"})


@dataclass(frozen=True)
class OneOf:
    """A rule value matching any of several backend names."""

    names: tuple[str, ...]

    def __str__(self) -> str:
        return " or ".join(repr(n) for n in self.names)


@dataclass(frozen=True)
class Rule:
    """Which cases of a joblib test a skip, xfail or override applies to.

    `where` maps argument names to the value a case must have there (a backend name, a
    `OneOf`, or a plain value); an empty `where` matches every case of the test.
    """

    test: str
    where: tuple[tuple[str, Any], ...] = ()

    def matches(self, test: str, params: dict[str, Any]) -> bool:
        return test == self.test and all(
            name in params and _matches(params[name], want) for name, want in self.where
        )

    def label(self) -> str:
        if not self.where:
            return self.test
        cond = ", ".join(
            f"{name}={want if isinstance(want, OneOf) else repr(want)}"
            for name, want in self.where
        )
        return f"{self.test} [{cond}]"


def _name(value: Any) -> Any:
    """A backend instance stands for its registered name ("bayou" for a BayouBackend)."""
    if isinstance(value, str) or value is None or isinstance(value, (bool, int, float)):
        return value
    from joblib.parallel import BACKENDS

    for name, cls in BACKENDS.items():
        if type(value) is cls:
            return name
    return value


def _matches(value: Any, want: Any) -> bool:
    value = _name(value)
    if isinstance(want, OneOf):
        return value in want.names
    return type(value) is type(want) and value == want


#: Outer backends whose workers are fresh interpreters, where nothing registered "bayou".
#: Not "multiprocessing": its workers fork (on Linux), so they inherit the registration,
#: and `bayou.joblib` gives a forked child executors of its own (`_after_fork_in_child`).
SPAWNING_PARENTS = OneOf(("loky", "back_compat_backend", "bayou"))

_UNREGISTERED = (
    "The inner `Parallel(backend='bayou')` runs in a worker process of the outer backend, "
    "where nothing imported `bayou.joblib`, so joblib there does not know the name "
    "'bayou' (joblib registers only its own backends; a task that wants nested bayou "
    "parallelism imports `bayou.joblib` itself). The same combinations with bayou outside, "
    "or below threading, sequential or multiprocessing (whose workers fork on Linux, so "
    "they inherit the registration), run."
)
_NO_JOBLIB_STATE = (
    "Checks the joblib configuration a task sees (`parallel_config` that joblib's "
    "`BatchedCalls` sets around the calls in the worker: ThreadingBackend, nesting level "
    "1, n_jobs). bayou unpacks batches in the caller and sends only the functions and "
    "arguments, so the environment needs no joblib: a task that calls joblib sees the "
    "environment's own joblib defaults, at nesting level 0."
)
_MEMMAP = (
    "Checks loky's automatic memory-mapping of large numpy arguments (`max_nbytes`): the "
    "task must receive an `np.memmap`. bayou has no such feature (it accepts and ignores "
    "`max_nbytes`/`mmap_mode`/`temp_folder`): arrays are pickled (protocol 5) to the worker."
)

#: Cases skipped, with the reason. README.md's table is generated from this dict.
SKIPS: dict[Rule, str] = {
    Rule(
        "test_nested_loop", (("parent_backend", SPAWNING_PARENTS), ("child_backend", "bayou"))
    ): _UNREGISTERED,
    Rule(
        "test_nested_parallel_warnings",
        (("parent_backend", SPAWNING_PARENTS), ("child_backend", "bayou")),
    ): _UNREGISTERED,
    Rule("test_dispatch_one_job"): (
        "Expects `n_jobs=1` to run the calls in the calling process, interleaved with the "
        "producer (the task appends to a list of the caller). bayou runs `n_jobs=1` in one "
        "worker of the environment, by design: the caller is the wrong environment."
    ),
    Rule("test_nested_backend_context_manager"): _NO_JOBLIB_STATE,
    Rule("test_nested_backend_in_sequential"): _NO_JOBLIB_STATE
    + " (Here also `n_jobs=1`, which bayou runs in a worker, not in the caller.)",
    Rule("test_backend_nesting_level"): _NO_JOBLIB_STATE,
    Rule("test_nested_parallelism_limit"): _NO_JOBLIB_STATE,
    Rule("test_auto_memmap_on_arrays_from_generator"): _MEMMAP,
    Rule("test_memmapping_leaks"): _MEMMAP,
}

#: Cases expected to fail (pytest xfail, not strict), with the reason.
XFAILS: dict[Rule, str] = {}

#: Values replaced in the generated bayou cases: (rule, argument) -> (value, reason).
OVERRIDES: dict[tuple[Rule, str], tuple[Any, str]] = {
    (
        Rule(
            "test_nested_parallel_warnings",
            (("parent_backend", "bayou"), ("child_backend", "multiprocessing")),
        ),
        "expected",
    ): (
        False,
        "joblib warns when a multiprocessing pool would start inside a loky or daemonic "
        "worker; a bayou worker is an ordinary main-thread process, where a nested "
        "multiprocessing pool is fine, so there is rightly no warning.",
    ),
    (
        Rule(
            "test_nested_parallel_warnings",
            (("parent_backend", "threading"), ("child_backend", "bayou")),
        ),
        "expected",
    ): (
        False,
        "joblib warns about process pools started below threads because they fork; "
        "bayou starts its workers with subprocess (no fork), so there is rightly no warning.",
    ),
    (
        Rule(
            "test_nested_parallel_warnings",
            (("parent_backend", "multiprocessing"), ("child_backend", "bayou")),
        ),
        "expected",
    ): (
        False,
        "joblib warns when a loky or multiprocessing pool would start inside a daemonic "
        "multiprocessing worker, which may not have children; bayou starts its workers with "
        "subprocess, which a daemonic process may do, so there is rightly no warning.",
    ),
    (Rule("test_multiple_generator_call_separated_gc", (("backend", "bayou"),)), "error"): (
        False,
        "loky shuts its single shared executor down when the first generator is collected, "
        "so the second call fails; bayou's abort cancels only the aborted call's tasks when "
        "another call shares the executor, so the second call succeeds, as with threading.",
    ),
}

PRELUDE = "import bayou.joblib  # added by integrations/joblib: registers the 'bayou' backend\n"


def _with_bayou_registered(check: Callable) -> Callable:
    """`check_subprocess_call` whose Python child imports `bayou.joblib` first.

    The tests below start a fresh interpreter on a script naming the backend; joblib
    there knows only its own backends until something imports `bayou.joblib`.
    """

    def run(cmd: list[str], *args: Any, **kwargs: Any) -> Any:
        cmd = list(cmd)
        if len(cmd) >= 3 and cmd[1] == "-c":
            cmd[2] = PRELUDE + cmd[2]
        elif len(cmd) >= 2 and cmd[1].endswith(".py"):
            script = Path(cmd[1])
            script.write_text(PRELUDE + script.read_text())
        return check(cmd, *args, **kwargs)

    return run


#: Module globals replaced for one test: test -> {global name: wrapper of the original}.
PATCHES: dict[str, dict[str, Callable[[Any], Any]]] = {
    "test_parallel_with_interactively_defined_functions": {
        "check_subprocess_call": _with_bayou_registered
    },
    "test_parallel_with_unpicklable_functions_in_args": {
        "check_subprocess_call": _with_bayou_registered
    },
}


def _show(value: Any) -> str:
    value = _name(value)
    return repr(value) if isinstance(value, (str, bool, int, float, type(None))) else str(value)


# --------------------------------------------------------------------------- loading


class SuiteUnavailable(RuntimeError):
    """joblib's test_parallel could not be imported from the installed joblib."""


def load_module() -> types.ModuleType:
    """`joblib.test.test_parallel` of the installed joblib, with bayou registered first."""
    import bayou.joblib  # noqa: F401  (registers "bayou" before the lists are computed)

    try:
        import joblib
    except ImportError as exc:
        raise SuiteUnavailable(f"joblib is not installed: {exc}") from exc
    location = Path(joblib.__file__).parent / "test" / "test_parallel.py"
    try:
        module = importlib.import_module(SUITE_MODULE)
    except ImportError as exc:
        raise SuiteUnavailable(
            f"cannot import {SUITE_MODULE} from joblib {joblib.__version__} at "
            f"{Path(joblib.__file__).parent} (expected {location}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return module


# --------------------------------------------------------------------------- selecting


def _argnames(mark: pytest.Mark) -> list[str]:
    names = mark.args[0]
    if isinstance(names, str):
        return [n.strip() for n in names.split(",") if n.strip()]
    return list(names)


def _values(mark: pytest.Mark, width: int) -> list[tuple]:
    """A parametrize mark's values as tuples (ParameterSet marks are not used in test_parallel)."""
    out = []
    for value in mark.args[1]:
        if hasattr(value, "values") and hasattr(value, "marks") and hasattr(value, "id"):
            value = value.values if width > 1 else value.values[0]
        out.append(tuple(value) if width > 1 else (value,))
    return out


def _is_loky(value: Any) -> bool:
    from joblib._parallel_backends import LokyBackend

    return (isinstance(value, str) and value == "loky") or isinstance(value, LokyBackend)


def _is_bayou(value: Any) -> bool:
    from bayou.joblib import BACKEND_NAME, BayouBackend

    return (isinstance(value, str) and value == BACKEND_NAME) or isinstance(value, BayouBackend)


def _as_bayou(value: Any) -> Any:
    from bayou.joblib import BACKEND_NAME, BayouBackend

    return BACKEND_NAME if isinstance(value, str) else BayouBackend()


def _id(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return str(value)
    return type(value).__name__


@dataclass
class Case:
    """One selected joblib test: its function, the merged backend mark, the other marks."""

    name: str
    original: Callable
    argnames: list[str]
    combos: list[tuple]
    other_marks: list[pytest.Mark] = field(default_factory=list)

    def params(self) -> list:
        params = []
        for combo in self.combos:
            values = dict(zip(self.argnames, combo, strict=True))
            for (rule, arg), (value, _) in OVERRIDES.items():
                if arg in values and rule.matches(self.name, values):
                    values[arg] = value
            combo = tuple(values[a] for a in self.argnames)
            marks = [
                pytest.mark.skip(reason=reason)
                for rule, reason in SKIPS.items()
                if rule.matches(self.name, values)
            ]
            marks += [
                pytest.mark.xfail(reason=reason, strict=False)
                for rule, reason in XFAILS.items()
                if rule.matches(self.name, values)
            ]
            case_id = "-".join(_id(v) for v in combo)
            params.append(pytest.param(*combo, marks=marks, id=case_id))
        return params

    def function(self) -> Callable:
        """A copy of joblib's test function carrying the bayou marks (same globals)."""
        fn = self.original
        namespace = fn.__globals__
        if self.name in PATCHES:
            namespace = dict(namespace)
            for name, wrap in PATCHES[self.name].items():
                namespace[name] = wrap(namespace[name])
        copy = types.FunctionType(
            fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__
        )
        copy.__kwdefaults__ = fn.__kwdefaults__
        copy.__dict__.update({k: v for k, v in fn.__dict__.items() if k != "pytestmark"})
        copy.__qualname__ = fn.__qualname__
        copy.__doc__ = fn.__doc__
        copy.__module__ = fn.__module__
        merged = pytest.mark.parametrize(",".join(self.argnames), self.params()).mark
        copy.pytestmark = [*self.other_marks, merged]
        return copy


def _bayou_combos(argnames: list[str], combos: Iterable[tuple]) -> list[tuple]:
    slots = [i for i, name in enumerate(argnames) if name in BACKEND_ARGS]
    out: list[tuple] = []
    seen: set[str] = set()

    def add(combo: tuple) -> None:
        key = repr([_id(v) for v in combo])
        if key not in seen:
            seen.add(key)
            out.append(combo)

    for combo in combos:
        if any(_is_bayou(combo[i]) for i in slots):
            add(combo)
        loky = [i for i in slots if _is_loky(combo[i])]
        for size in range(1, len(loky) + 1):
            for chosen in itertools.combinations(loky, size):
                add(tuple(_as_bayou(v) if i in chosen else v for i, v in enumerate(combo)))
    return out


def case_for(name: str, fn: Callable) -> Case | None:
    """The bayou `Case` of a joblib test function, or None when it is not over process backends."""
    marks = [m for m in getattr(fn, "pytestmark", []) if m.name not in DROPPED_MARKS]
    backend_marks = [
        m for m in marks if m.name == "parametrize" and BACKEND_ARGS & set(_argnames(m))
    ]
    if not backend_marks:
        return None
    argnames: list[str] = []
    value_lists = []
    for mark in backend_marks:
        names = _argnames(mark)
        argnames += names
        value_lists.append(_values(mark, len(names)))
    product = [
        tuple(itertools.chain.from_iterable(parts)) for parts in itertools.product(*value_lists)
    ]
    combos = _bayou_combos(argnames, product)
    if not combos:
        return None
    others = [m for m in marks if not any(m is b for b in backend_marks)]
    return Case(name, fn, argnames, combos, others)


def select_cases(module: types.ModuleType) -> dict[str, Case]:
    cases = {}
    for name, fn in vars(module).items():
        if name.startswith("test_") and isinstance(fn, types.FunctionType):
            case = case_for(name, fn)
            if case is not None:
                cases[name] = case
    return cases


# --------------------------------------------------------------------------- README table

TABLE_START = "<!-- skips-table:start (generated from SKIPS: suite.py readme) -->"
TABLE_END = "<!-- skips-table:end -->"


def skips_table() -> str:
    rows = ["| Test | Skipped because |", "| --- | --- |"]
    for rule, reason in SKIPS.items():
        rows.append(f"| `{rule.label()}` | {reason} |")
    rows += ["", "| Test | Expected to fail because |", "| --- | --- |"]
    for rule, reason in XFAILS.items():
        rows.append(f"| `{rule.label()}` | {reason} |")
    rows += ["", "| Test | Value for bayou | Why |", "| --- | --- | --- |"]
    for (rule, arg), (value, reason) in OVERRIDES.items():
        rows.append(f"| `{rule.label()}` | `{arg}={_show(value)}` | {reason} |")
    rows += ["", "| Test | Adapted | How |", "| --- | --- | --- |"]
    for test, patches in PATCHES.items():
        for name, wrap in patches.items():
            how = " ".join((wrap.__doc__ or "").split("\n\n")[0].split())
            rows.append(f"| `{test}` | `{name}` | {how} |")
    return "\n".join(rows)


def readme_with_table(text: str) -> str:
    start, end = text.index(TABLE_START), text.index(TABLE_END)
    return text[: start + len(TABLE_START)] + "\n" + skips_table() + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integrations.joblib.suite")
    parser.add_argument("command", choices=["list", "readme"])
    args = parser.parse_args(argv)
    if args.command == "readme":
        readme = Path(__file__).with_name("README.md")
        readme.write_text(readme_with_table(readme.read_text()))
        return 0
    cases = select_cases(load_module())
    total = 0
    for case in cases.values():
        for param in case.params():
            total += 1
            skip = next((m.kwargs["reason"] for m in param.marks), None)
            print(f"{case.name}[{param.id}]" + (f"  SKIPPED: {skip}" if skip else ""))
    print(f"{len(cases)} tests, {total} bayou combinations (before other parametrizations)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
