"""Turning task payloads into Python objects and results back into bytes, in the worker.

User objects are (un)pickled with the caller's cloudpickle, vendored here as
``_bayou_vendor_cloudpickle``. Pickles made by the caller name cloudpickle's
helpers as ``cloudpickle.*``; `_Unpickler.find_class` maps those to the
private copy, so the environment's own ``cloudpickle`` (any version, or none)
is never imported by the transport. The caller maps the private name back.

Functions arrive either as a cloudpickle blob (same Python X.Y only) or as a
reference (module, qualname, file) that is imported here; `roots` are
directories of the caller's own modules, appended to `sys.path` so the
environment's packages keep precedence.

Arguments and results use pickle protocol 5: big buffers stay out of band
(`shm.collector`) and are passed to `loads` as views of wherever they
arrived (a shared-memory mapping, or the frame itself), so they are never
copied into a pickle and out of it again.

Exceptions become an *error record*: type name, message, formatted traceback,
the traceback as a tblib dict (rebuilt into real frames by the caller) and
the pickled exception when it can be pickled.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import os
import pickle
import sys
import traceback
import types

from . import actor, mainscript, names, shm, wire

PROTOCOL = min(5, pickle.HIGHEST_PROTOCOL)
_VENDOR_CP = names.vendored("cloudpickle")
_cloudpickle = None
_fn_cache: dict[bytes, object] = {}
_added_roots: set[str] = set()


def cloudpickle():
    global _cloudpickle
    if _cloudpickle is None:
        _cloudpickle = importlib.import_module(_VENDOR_CP)
    return _cloudpickle


class _Unpickler(pickle.Unpickler):
    """Maps the caller's names to this interpreter's (`names`), and says which global
    failed to load: the caller turns that into the argument at fault."""

    def find_class(self, module, name):
        try:
            if module == names.MAIN:
                return mainscript.find(name)
            module = names.numpy_module(names.vendored(module))
            return super().find_class(module, name)
        except Exception as exc:
            if getattr(exc, "bayou_global", None) is None:
                try:
                    exc.bayou_global = "%s.%s" % (module, name)
                except Exception:
                    pass
            raise


def loads(data, start=0, end=None, buffers=None):
    """Unpickle ``data[start:end]`` (bytes or bytearray) without copying it."""
    if end is None:
        end = len(data)
    view = memoryview(data)[start:end] if start or end != len(data) else data
    if not names.mentions(data, start, end):
        return pickle.loads(view, buffers=buffers)
    return _Unpickler(io.BytesIO(view), buffers=buffers).load()


_PLAIN_ATOMS = frozenset((type(None), bool, int, float, str))
_PLAIN_CONTAINERS = frozenset((tuple, list, dict))


def is_plain(obj, depth=2) -> bool:
    """Small builtin data, which plain pickle writes exactly as cloudpickle would, without
    building a cloudpickle Pickler (about 9 us, a noticeable part of a tiny task). The
    caller's encoder uses it too (a call's ``(args, kwargs)``)."""
    t = type(obj)
    if t in _PLAIN_ATOMS:
        return True
    if t not in _PLAIN_CONTAINERS or not depth or len(obj) > 8:
        return False
    # plain loops: a generator per level under all() cost more than the pickling saved
    if t is dict:
        for k, v in obj.items():
            if type(k) is not str or not (type(v) in _PLAIN_ATOMS or is_plain(v, depth - 1)):
                return False
        return True
    for x in obj:  # noqa: SIM110 (a generator under all() is what this avoids)
        if not (type(x) in _PLAIN_ATOMS or is_plain(x, depth - 1)):
            return False
    return True


def dumps(obj, buffers=None) -> bytes:
    """Pickle `obj`; with a `buffers` list, its big buffers go there, out of band."""
    if is_plain(obj):
        return pickle.dumps(obj, PROTOCOL)
    if buffers is None:
        return cloudpickle().dumps(obj, protocol=PROTOCOL)
    return cloudpickle().dumps(obj, protocol=PROTOCOL, buffer_callback=shm.collector(buffers))


def add_roots(roots) -> None:
    for root in roots:
        if root.startswith(wire.MAIN_ROOT):
            kind, _, where = root[len(wire.MAIN_ROOT) :].partition(":")
            mainscript.expect(kind, where)
        elif root not in _added_roots:
            _added_roots.add(root)
            if root not in sys.path:
                sys.path.append(root)


def resolve(record):
    """The callable a TASK's function record stands for."""
    if record[0] == wire.FN_PICKLED:
        blob = record[1]
        fn = _fn_cache.get(blob)
        if fn is None:
            fn = loads(blob)
            if _stateless(fn):
                if len(_fn_cache) >= 16:
                    _fn_cache.clear()
                _fn_cache[blob] = fn
        return fn
    if record[0] == wire.FN_ACTOR:
        return actor.method(record[1])
    _, module_name, qualname, path = record
    module = _import(module_name, path)
    obj = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _stateless(fn) -> bool:
    """Whether a loaded callable may serve later tasks: not when it carries an
    instance (a bound method, a partial), which a task may change; each task gets
    its own copy, as with ProcessPoolExecutor."""
    if isinstance(fn, (types.FunctionType, type)):
        return True
    if isinstance(fn, (types.MethodType, types.BuiltinFunctionType)):
        owner = fn.__self__
        return owner is None or isinstance(owner, (type, types.ModuleType))
    return False


def _import(name, path):
    if path is None:
        return importlib.import_module(name)
    module = sys.modules.get(name)
    if module is not None and _same_file(getattr(module, "__file__", None), path):
        return module
    # An explicit file: load that file, whatever the env has under its name.
    add_roots([os.path.dirname(path)])
    if module is not None:
        name = "_bayou_file_%x_%s" % (abs(hash(path)), name)
        if name in sys.modules:
            return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError("cannot load a module from %r" % (path,))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _same_file(a, b):
    try:
        return a is not None and os.path.samefile(a, b)
    except OSError:
        return False


def type_name(tp) -> str:
    module = getattr(tp, "__module__", None)
    qualname = getattr(tp, "__qualname__", getattr(tp, "__name__", repr(tp)))
    if module in (None, "builtins"):
        return qualname
    return "%s.%s" % (module, qualname)


def _safe_str(exc) -> str:
    try:
        return str(exc)
    except BaseException:
        return "<str() failed>"


def _tb_dict(tb):
    if tb is None:
        return None
    try:
        tblib = importlib.import_module("_bayou_vendor_tblib")
        return tblib.Traceback(tb).as_dict()
    except BaseException:
        return None


def error_record(exc, skip=0, note=None) -> dict:
    """Describe `exc` for the caller, dropping `skip` frames of ours."""
    tb = exc.__traceback__
    for _ in range(skip):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    try:
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    except BaseException:
        text = "%s: %s\n" % (type_name(type(exc)), _safe_str(exc))
    try:
        blob = dumps(exc)
    except BaseException:
        blob = None
    return {
        "type": type_name(type(exc)),
        "message": _safe_str(exc),
        "traceback": text,
        "tb": _tb_dict(tb),
        "exc": blob,
        "note": note,
    }


def load_error_record(exc, part) -> dict:
    """An error record for a TASK whose `part` ("function" or "arguments") failed to
    load, with what the caller needs to name the culprit: the global that failed,
    the missing module, and this interpreter's Python and numpy versions."""
    record = error_record(exc, skip=1, note=part)
    record["global"] = getattr(exc, "bayou_global", None)
    record["missing"] = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    record["versions"] = versions()
    return record


def versions() -> dict:
    """This interpreter's Python and, when it has one, numpy version."""
    found = {"python": "%d.%d.%d" % sys.version_info[:3]}
    numpy = sys.modules.get("numpy")
    version = getattr(numpy, "__version__", None)
    if version is None:
        try:
            from importlib.metadata import version as dist_version

            version = dist_version("numpy")
        except Exception:
            version = None
    if version is not None:
        found["numpy"] = version
    return found
