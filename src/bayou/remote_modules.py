"""Calling functions of a module that exists only in the environment, by name.

    ex.import_module("tools.py") ─▶ ModuleProxy ─▶ .sum ─▶ RemoteFunction
        ─▶ (call) executor.submit_call(module, "sum", args) ─▶ a task whose
           function record is (FN_REF, module name, "sum", file or None)
        ─▶ the worker imports the module (or loads the file) and calls it

The module is never imported in the caller: that is the point, it may need
packages only the env has.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Protocol

from . import boundary
from .futures import BayouFuture


class ModuleCaller(Protocol):
    """What the proxies need of an executor (`EnvExecutor`)."""

    environment: Any

    def execute(
        self,
        module: str | os.PathLike[str],
        function: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any: ...

    def submit_call(
        self,
        module: str | os.PathLike[str],
        function: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> BayouFuture[Any]: ...


def module_reference(module: str | os.PathLike[str]) -> tuple[str, str | None, frozenset[str]]:
    """(module name, file path or None, extra sys.path roots) for `import_module`."""
    text = os.fspath(module)
    if text.endswith(".py") or os.sep in text or (os.altsep and os.altsep in text):
        path = Path(text).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"no such module file: {path}")
        return path.stem, str(path), frozenset()
    roots: frozenset[str] = frozenset()
    if text in sys.modules:
        root = boundary.module_root(text)
        if root is not None:
            roots = frozenset([root])
    return text, None, roots


class ModuleProxy:
    """`ex.import_module(...)`: attribute access gives functions that run in the env."""

    def __init__(self, executor: ModuleCaller, module: str | os.PathLike[str]) -> None:
        self._executor = executor
        self._module = module

    def __getattr__(self, name: str) -> RemoteFunction:
        if name.startswith("__"):
            raise AttributeError(name)
        return RemoteFunction(self._executor, self._module, name)

    def __repr__(self) -> str:
        return f"<bayou module proxy {os.fspath(self._module)!r} in env {self._executor.environment.hash}>"


class RemoteFunction:
    """A function of an environment-side module: call it (blocking) or `submit` it."""

    def __init__(self, executor: ModuleCaller, module: str | os.PathLike[str], name: str) -> None:
        self._executor = executor
        self._module = module
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._executor.execute(self._module, self._name, args, kwargs)

    def submit(self, *args: Any, **kwargs: Any) -> BayouFuture[Any]:
        return self._executor.submit_call(self._module, self._name, args, kwargs)

    def __getattr__(self, name: str) -> RemoteFunction:
        if name.startswith("__"):
            raise AttributeError(name)
        return RemoteFunction(self._executor, self._module, f"{self._name}.{name}")

    def __repr__(self) -> str:
        return f"<bayou remote function {os.fspath(self._module)}:{self._name}>"
