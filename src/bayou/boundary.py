"""The caller's side of the env boundary: what a task's function and data become
in a pickle for one target env, and what a worker's pickle becomes here.

Data flow::

    submit(fn, *args)
      └─▶ TaskEncoder.function(fn) ─▶ fn record ┐
      └─▶ TaskEncoder.call_args(...) ─▶ blob    ├─▶ TASK (protocol.encode_task)
              (+ roots: what the worker must    ┘
               import: module dirs, the main script)
    RESULT ─▶ loads() ─▶ value   (names mapped: `worker.names`)

How a callable crosses (DESIGN.md, "The env boundary"), in order:

1. by reference, by module and qualified name: module-level functions and
   classes, staticmethods, nested classes, builtins. Bound methods and
   classmethods go as plain pickle sends them, ``getattr(owner, name)``,
   so their function is never bytecode (`_method_by_name`). The module
   of the caller's own code (not the stdlib, not site-packages) gets its
   sys.path directory in the roots, so the worker can import it too.
2. what the caller's ``__main__`` script defines: for a worker of another
   Python X.Y, by reference to that script (``__main__.name``), which the
   worker imports as multiprocessing's spawn does (`worker.mainscript`);
   the script travels in the roots (`wire.MAIN_ROOT`).
3. by value (cloudpickle bytecode), only for a worker of the caller's X.Y:
   lambdas, closures, notebook cells, and ``__main__`` there. For a worker
   of another X.Y, `_EnvPickler` refuses them up front with a
   `CrossVersionError` naming the callable, both versions and the fix.

By-value code keeps its real ``co_filename`` (cloudpickle 3.1.3 writes
``<dynamic-code>``), so remote tracebacks show the file and source line.

Data needs no conversion: numpy arrays and scalars pickle through a few
numpy functions whose module numpy 2 renamed, and the receiving side maps
the name (`worker.names`), so the bytes and the out-of-band buffers are
those of the same-version path. When a worker cannot load a task's
arguments, or the caller a result, `culprit` finds which argument (or
which class in the result) named the global that failed.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import site
import sys
import sysconfig
import types
import weakref
from collections import ChainMap
from collections.abc import Callable
from typing import Any, cast

import cloudpickle

from . import errors, mp_objects
from .worker import codec, names, wire
from .worker import shm as worker_shm
from .worker.codec import is_plain

PICKLE_PROTOCOL = 5
CALLER_XY = tuple(sys.version_info[:2])


# -- where the caller's own code lives ------------------------------------------------


def _system_dirs() -> tuple[str, ...]:
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    for name in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            dirs.add(sysconfig.get_paths()[name])
        except KeyError:
            pass
    try:
        dirs.update(site.getsitepackages())
        dirs.add(site.getusersitepackages())
    except AttributeError:
        pass
    return tuple(os.path.join(os.path.realpath(d), "") for d in dirs if d)


_SYSTEM_DIRS = _system_dirs()
_roots_by_module: dict[str, str | None] = {}


def module_root(name: str) -> str | None:
    """The sys.path entry the caller's own module `name` was imported from."""
    if name in _roots_by_module:
        return _roots_by_module[name]
    root = None
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    if path and name != "__main__":
        path = os.path.realpath(path)
        if not path.startswith(_SYSTEM_DIRS):
            depth = name.count(".") + 1
            if os.path.basename(path).startswith("__init__."):
                depth += 1
            root = path
            for _ in range(depth):
                root = os.path.dirname(root)
    _roots_by_module[name] = root
    return root


def main_roots() -> frozenset[str] | None:
    """The roots that let a worker import the caller's main script, or None when
    there is no script to import (an interactive session, a notebook, ``-c``)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not os.path.isfile(path):
        return None
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if name and name != "__main__":  # python -m pkg.mod
        roots = {wire.MAIN_ROOT + "module:" + name}
        top = sys.modules.get(name.partition(".")[0])
        root = module_root(top.__name__) if top is not None else None
        if root is None:
            root = os.path.realpath(path)
            for _ in range(name.count(".") + 1):
                root = os.path.dirname(root)
        roots.add(root)
        return frozenset(roots)
    path = os.path.realpath(path)
    return frozenset((wire.MAIN_ROOT + "path:" + path, os.path.dirname(path)))


def _in_main(obj: Any) -> bool:
    """Whether `obj` is what the caller's ``__main__.<its qualname>`` names."""
    found: Any = sys.modules.get("__main__")
    try:
        for part in obj.__qualname__.split("."):
            found = getattr(found, part)
    except AttributeError:
        return False
    return found is obj


# -- describing what the user passed ----------------------------------------------------


def describe(obj: Any) -> str:
    """The callable or object as the user wrote it, for error messages."""
    if isinstance(obj, types.MethodType):
        owner = obj.__self__
        name = getattr(obj.__func__, "__name__", "?")
        if isinstance(owner, type):
            return f"the classmethod {owner.__module__}.{owner.__qualname__}.{name}"
        cls = type(owner)
        return f"the method {name} of a {cls.__module__}.{cls.__qualname__} object"
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    module = getattr(obj, "__module__", None)
    if name is None:
        return f"{type(obj).__name__} object {obj!r:.60}"
    if name == "<lambda>":
        return f"the lambda defined in module {module!r}"
    if "<locals>" in name:
        if isinstance(obj, type):
            return f"the local class {module}.{name} (defined inside a function)"
        return f"the nested function {module}.{name}"
    kind = "class" if isinstance(obj, type) else "function"
    return f"the {kind} {module}.{name}"


def type_label(value: Any) -> str:
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}"


# -- pickling for an env ------------------------------------------------------------------


class _ByValueError(Exception):
    """An object that would travel as bytecode to a worker of another Python X.Y."""

    def __init__(self, obj: Any, target_xy: tuple[int, int]) -> None:
        self.obj = obj
        self.target_xy = target_xy
        super().__init__(self.message())

    def message(self, outer: Any = None) -> str:
        caller = "{}.{}".format(*CALLER_XY)
        target = "{}.{}".format(*self.target_xy)
        if getattr(self.obj, "__module__", None) == "__main__" and main_roots() is None:
            why = "was defined in an interactive session or a notebook cell"
        else:
            why = "is not importable by name"
        if outer is not None and outer is not self.obj:
            what = f"{describe(outer)}: it holds {describe(self.obj)}, which {why}"
        else:
            what = f"{describe(self.obj)}: it {why}"
        return (
            f"cannot send {what}, so it would travel as bytecode, which only works "
            f"between identical Python versions (the caller runs Python {caller}, the env "
            f"Python {target}). Define it at the top level of a module file (e.g. tasks.py) "
            f"and import it from there; bayou then sends it by reference and the worker "
            f"imports that file."
        )


def _method_by_name(obj: types.MethodType) -> tuple | None:
    """``getattr(owner, name)``, as plain pickle reduces a bound method, when that finds
    this very method: its function then never travels as bytecode."""
    name = getattr(obj.__func__, "__name__", None)
    try:
        same = name is not None and getattr(obj.__self__, name) == obj
    except Exception:
        same = False
    return (getattr, (obj.__self__, name)) if same else None


def _method_reduce(obj: types.MethodType) -> tuple:
    return _method_by_name(obj) or cloudpickle.cloudpickle._method_reduce(obj)


def _code_reduce(obj: types.CodeType) -> tuple:
    """cloudpickle's code reduction with the real file name kept (3.1.3 writes
    ``<dynamic-code>``), so tracebacks of by-value functions show their source."""
    constructor, args = cloudpickle.cloudpickle._code_reduce(obj)
    args = tuple(obj.co_filename if a == "<dynamic-code>" else a for a in args)
    return constructor, args


_BUILTIN_TYPES = frozenset(getattr(cloudpickle.cloudpickle, "_BUILTIN_TYPE_NAMES", {}))


class _CallerPickler(cloudpickle.Pickler):
    """cloudpickle, with bound methods by name and real file names in code."""

    dispatch_table = ChainMap(
        {types.MethodType: _method_reduce, types.CodeType: _code_reduce},
        cloudpickle.Pickler.dispatch_table,
    )


class _EnvPickler(_CallerPickler):
    """For an env other than the caller's: notes roots, sends ``__main__`` by name to
    another X.Y, and refuses bytecode there."""

    def __init__(self, file, target_xy: tuple[int, int], buffer_callback=None) -> None:
        super().__init__(file, protocol=PICKLE_PROTOCOL, buffer_callback=buffer_callback)
        self.target_xy = target_xy
        self.cross_version = target_xy != CALLER_XY
        self.roots: set[str] = set()

    def reducer_override(self, obj):
        t = type(obj)
        if t is types.FunctionType or issubclass(t, type):
            if self.cross_version and getattr(obj, "__module__", None) == "__main__":
                main = main_roots()
                if main is not None and _in_main(obj):
                    self.roots.update(main)
                    return NotImplemented  # plain pickle's global: __main__.<qualname>
            if cloudpickle.cloudpickle._should_pickle_by_reference(obj):
                root = module_root(getattr(obj, "__module__", None) or "")
                if root is not None:
                    self.roots.add(root)
            elif self.cross_version and obj not in _BUILTIN_TYPES:
                raise _ByValueError(obj, self.target_xy)
        elif t is types.CodeType and self.cross_version:
            raise _ByValueError(obj, self.target_xy)
        return super().reducer_override(obj)


class TaskEncoder:
    """Pickles functions and arguments for workers of one environment."""

    def __init__(self, target_xy: tuple[int, int], *, foreign: bool) -> None:
        self.target_xy = cast("tuple[int, int]", tuple(target_xy))  # a list works too
        self.foreign = foreign
        # records of module-level functions (pickled by reference: module and name
        # only, so they cannot go stale), to skip a cloudpickle per submit
        self._by_reference: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def dumps(self, obj: Any, buffers: list | None = None) -> tuple[bytes, frozenset[str]]:
        """(pickle, roots); `_ByValueError` or the pickling error on failure.

        With a `buffers` list, big pickle buffers are left out of band and
        appended to it (`worker.shm.collector`): the pickle needs them to load.
        """
        if is_plain(obj):  # the bytes cloudpickle would write, without its Pickler
            return pickle.dumps(obj, PICKLE_PROTOCOL), frozenset()
        callback = None if buffers is None else worker_shm.collector(buffers)
        buf = io.BytesIO()
        if not self.foreign:
            _CallerPickler(buf, protocol=PICKLE_PROTOCOL, buffer_callback=callback).dump(obj)
            return buf.getvalue(), frozenset()
        pickler = _EnvPickler(buf, self.target_xy, callback)
        pickler.dump(obj)
        return buf.getvalue(), frozenset(pickler.roots)

    def function(self, fn: Callable) -> tuple[tuple, frozenset[str]]:
        try:
            return self._by_reference[fn]
        except (KeyError, TypeError):  # not seen yet, or not weakly referenceable
            pass
        try:
            blob, roots = self.dumps(fn)
        except _ByValueError as exc:
            raise errors.CrossVersionError(exc.message(fn)) from None
        except Exception as exc:
            raise errors.PicklingError(
                f"cannot pickle {describe(fn)}: {type(exc).__name__}: {exc}"
            ) from exc
        record = (wire.FN_PICKLED, blob), roots
        if type(fn) is types.FunctionType and (
            roots or cloudpickle.cloudpickle._should_pickle_by_reference(fn)
        ):
            self._by_reference[fn] = record
        return record

    def call_args(
        self, fn: Callable, args: tuple, kwargs: dict, buffers: list | None = None
    ) -> tuple[bytes, frozenset]:
        try:
            return self.dumps((args, kwargs), buffers)
        except Exception as exc:
            raise self._args_error(fn, exc, call_candidates(args, kwargs)) from _cause(exc)

    def chunk_args(
        self, fn: Callable, chunk: list, buffers: list | None = None
    ) -> tuple[bytes, frozenset]:
        try:
            return self.dumps(chunk, buffers)
        except Exception as exc:
            raise self._args_error(fn, exc, chunk_candidates(chunk)) from _cause(exc)

    def _args_error(self, fn, exc, candidates: list) -> errors.PicklingError:
        culprit = "an argument"
        for label, value in candidates:
            try:
                self.dumps(value)
            except Exception:
                culprit = f"{label} ({type_label(value)})"
                break
        if isinstance(exc, _ByValueError):
            return errors.CrossVersionError(
                f"{culprit} of the call to {describe(fn)}: {exc.message()}"
            )
        reason = f"{type(exc).__name__}: {exc}"
        for label, value in candidates:  # a multiprocessing queue or lock: say what works
            found = mp_objects.locate(value, label)
            if found is not None:
                where, obj = found
                culprit = f"{where} ({type_label(obj)})"
                reason += f"; {mp_objects.inheritance_only_hint(obj)}"
                break
        return errors.PicklingError(
            f"cannot pickle {culprit} of the call to {describe(fn)}: {reason}"
        )

    def globals_of(self, value: Any) -> set[str]:
        """The ``module.name`` globals `value`'s pickle for this env names."""
        try:
            blob, _ = self.dumps(value, [])
        except Exception:
            return set()
        return pickle_globals(blob)


def _cause(exc: BaseException) -> BaseException | None:
    return None if isinstance(exc, _ByValueError) else exc


def call_candidates(args: tuple, kwargs: dict) -> list[tuple[str, Any]]:
    found = [(f"argument {i}", a) for i, a in enumerate(args)]
    return found + [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]


def chunk_candidates(chunk: list) -> list[tuple[str, Any]]:
    if len(chunk) == 1:
        return [(f"argument {j}", a) for j, a in enumerate(chunk[0])]
    return [
        (f"argument {j} of item {i}", a)
        for i, args in enumerate(chunk)
        for j, a in enumerate(args)
    ]


# -- reading pickles ---------------------------------------------------------------------

_STRING_OPS = frozenset(("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"))


def pickle_globals(data) -> set[str]:
    """Every ``module.name`` a pickle looks up (GLOBAL, STACK_GLOBAL), read without
    loading it. STACK_GLOBAL takes the two strings pushed before it, which pickle and
    cloudpickle write directly or fetch from the memo."""
    found: set[str] = set()
    memo: dict[int, Any] = {}
    recent: list = [None, None]
    arg: Any  # an opcode's argument, whose type the opcode decides
    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            if name in _STRING_OPS:
                recent = [recent[1], arg]
            elif name == "MEMOIZE":
                memo[len(memo)] = recent[1]
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = recent[1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                recent = [recent[1], memo.get(arg)]
            elif name == "GLOBAL":
                found.add(arg.replace(" ", "."))
                recent = [recent[1], None]
            elif name == "STACK_GLOBAL":
                if isinstance(recent[0], str) and isinstance(recent[1], str):
                    found.add(f"{recent[0]}.{recent[1]}")
                recent = [recent[1], None]
            else:
                recent = [recent[1], None]
    except Exception:
        pass  # a truncated or odd pickle: what was read so far
    return found


def culprit(encoder: TaskEncoder, candidates: list[tuple[str, Any]], record: dict) -> str | None:
    """The candidate (label and type) whose pickle names the global the worker could
    not load, or the module it missed; None when none does."""
    wanted = record.get("global")
    missing = record.get("missing")
    for label, value in candidates:
        found = encoder.globals_of(value)
        if wanted in found or (
            missing and any(g == missing or g.startswith(missing + ".") for g in found)
        ):
            return f"{label} ({type_label(value)})"
    return None


def versions_text(versions: dict | None) -> str:
    if not versions:
        return ""
    text = f"Python {versions['python']}"
    if versions.get("numpy"):
        text += f", numpy {versions['numpy']}"
    return text


# -- loading what workers send ----------------------------------------------------------


class _Unpickler(pickle.Unpickler):
    """Maps a worker's names to the caller's (`worker.names`) and notes which global
    failed, for the error."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            mapped = names.numpy_module(names.public(module))
            if mapped == names.WORKER_MAIN:
                mapped = names.MAIN
            return super().find_class(mapped, name)
        except Exception as exc:
            if getattr(exc, "bayou_global", None) is None:
                try:
                    exc.bayou_global = f"{module}.{name}"  # type: ignore[attr-defined]
                except Exception:
                    pass
            raise


def loads(data, start: int = 0, end: int | None = None, buffers=None) -> Any:
    """Unpickle `data[start:end]` (bytes or bytearray) without copying it."""
    if end is None:
        end = len(data)
    view = memoryview(data)[start:end] if start or end != len(data) else data
    if not names.mentions(data, start, end):
        try:
            return pickle.loads(view, buffers=buffers)
        except Exception:
            pass  # again, through find_class: the error then says which global failed
    return _Unpickler(io.BytesIO(view), buffers=buffers).load()


def result_load_error(label: str, exc: BaseException) -> errors.UnpicklingError:
    """The error for a result the caller cannot load: the class it holds, its module."""
    held = getattr(exc, "bayou_global", None)
    what = ""
    if held:
        module = held.rpartition(".")[0]
        what = f": it holds {held} (module {module}), which the caller cannot load"
    err = errors.UnpicklingError(
        f"the result of {label} could not be unpickled in the caller "
        f"({versions_text(codec.versions())}){what}: {type(exc).__name__}: {exc}. "
        "Return builtins, numpy data or classes the caller can import, or install "
        "what is missing where the caller runs."
    )
    err.__cause__ = exc
    return err
