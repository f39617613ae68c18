"""The caller's main script, imported in the worker the way multiprocessing's spawn does.

Functions and classes defined in the script the user ran live in the
caller's ``__main__``. Between equal Python X.Y they may travel as bytecode
(cloudpickle), but bytecode does not cross Python versions, so for a worker
of another X.Y the caller pickles them by name (``__main__.segment``), and
the TASK's roots carry where the script is (`wire.main_root`)::

    caller: pickle names __main__.segment ──▶ roots: "__main__:path:/home/u/run.py"
    worker: find_class("__main__", "segment")
              └─▶ module(): /home/u/run.py imported once as ``__mp_main__``
                  (its ``if __name__ == "__main__":`` block does not run),
                  also registered as ``sys.modules["__main__"]``, as spawn does
              └─▶ getattr(module, "segment")

A script started with ``python -m pkg.mod`` is found by its module name and
imported from its file under ``__mp_main__`` with its package set, so its
relative imports work. When the import fails (the script imports at its top
level something the env lacks), the error names the script, the line and the
import that failed, and the fix.
"""

from __future__ import annotations

import importlib.util
import linecache
import os
import sys
import types

from . import names

_modules: dict[tuple[str, str], types.ModuleType] = {}  # (kind, where) -> the imported script
_current = None  # (kind, where) of the task being loaded


def expect(kind, where) -> None:
    """The task being loaded comes from the caller whose main script this is."""
    global _current
    _current = (kind, where)


def find(qualname):
    """The object the caller calls ``__main__.<qualname>``."""
    module = _module()
    obj = module
    try:
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise AttributeError(
            "the caller's main script %s defines no %r when it is imported (as "
            'multiprocessing\'s spawn imports it: its `if __name__ == "__main__":` block '
            "does not run). Define %s at the top level of the script, above that block, "
            "or in a module of its own." % (_where(), qualname, qualname)
        ) from None
    return obj


def _where():
    if _current is None:
        return "(unknown)"
    kind, where = _current
    return where if kind == "path" else "%s (python -m %s)" % (_origin(where), where)


def _origin(module_name):
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        spec = None
    return spec.origin if spec is not None and spec.origin else module_name


def _module():
    if _current is None:
        raise ImportError("a task names the caller's __main__, but the caller sent no main script")
    module = _modules.get(_current)
    if module is None:
        module = _import(*_current)
        _modules[_current] = module
    sys.modules[names.WORKER_MAIN] = module
    sys.modules[names.MAIN] = module
    return module


def _import(kind, where):
    if kind == "path":
        path, package = where, None
    else:
        path, package = _origin(where), where.rpartition(".")[0]
    spec = importlib.util.spec_from_file_location(names.WORKER_MAIN, path)
    if spec is None or spec.loader is None:
        raise ImportError("cannot load the caller's main script %s" % (path,))
    module = importlib.util.module_from_spec(spec)
    if package is not None:
        module.__package__ = package
    previous = sys.modules.get(names.WORKER_MAIN)
    sys.modules[names.WORKER_MAIN] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        if previous is None:
            sys.modules.pop(names.WORKER_MAIN, None)
        else:
            sys.modules[names.WORKER_MAIN] = previous
        if isinstance(exc, Exception):
            raise ImportError(_failure(path, exc)) from exc
        raise
    return module


def _failure(path, exc) -> str:
    """What went wrong importing the script, where in it, and what to do."""
    line = ""
    tb = exc.__traceback__
    while tb is not None:
        if _same(tb.tb_frame.f_code.co_filename, path):
            lineno = tb.tb_lineno
            source = linecache.getline(path, lineno).strip()
            line = " at line %d (%s)" % (lineno, source) if source else " at line %d" % lineno
        tb = tb.tb_next
    version = "%d.%d.%d" % sys.version_info[:3]
    missing = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    fix = (
        "The env lacks %r: install it in the env, or move that import under "
        '`if __name__ == "__main__":` or into the functions that need it, or define the '
        "function in a module of its own that imports only what the env has." % missing
        if missing
        else "Make the script importable in the env: move code that must not run there "
        'under `if __name__ == "__main__":`.'
    )
    return (
        "the worker (Python %s, %s) imports the caller's main script %s to find the "
        "functions and classes defined there, as multiprocessing's spawn does, and that "
        "import failed%s: %s: %s. %s"
        % (version, sys.executable, path, line, type(exc).__name__, exc, fix)
    )


def _same(a, b) -> bool:
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
