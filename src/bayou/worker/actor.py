"""The one object an actor's worker keeps, built before READY and called by name.

An actor's pool sends its worker the pickled class and (args, kwargs) in
the WELCOME config; the worker builds the instance (`build`) before it
says READY, so a constructor that raises becomes INIT_FAILED and fails the
actor's calls with its own exception. Each call is then a TASK whose
function record is ``(FN_ACTOR, method name)``: `call` looks the name up
on the instance, and the task runs as any other (progress, cancel, errors).

``target`` is a class (sent by reference, so any Python works), or a
``"module:Qualname"`` string naming one that may exist only in the env.

Stdlib only, Python 3.8+: this runs in the env's interpreter.
"""

from __future__ import annotations

import functools
import importlib

_instance = None


def build(target, args, kwargs) -> None:
    """Construct the actor's object."""
    global _instance
    if isinstance(target, str):
        target = resolve(target)
    _instance = target(*args, **kwargs)


def resolve(reference: str):
    """The class a ``"module:Qualname"`` string names, imported here."""
    module_name, _, qualname = reference.partition(":")
    obj = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def method(name: str):
    """What a TASK naming `name` calls: the object's bound method, looked up for each
    call (an object may replace its attributes); a name it lacks fails the call
    itself with its own AttributeError, not as a load failure."""
    found = getattr(_instance, name, None)
    if found is not None:
        return found
    return functools.partial(call, name)


def call(name: str, *args, **kwargs):
    return getattr(_instance, name)(*args, **kwargs)
