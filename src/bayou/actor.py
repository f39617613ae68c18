"""Actors: one object that lives in an env, in a worker process of its own.

Loading a model takes seconds and calling it takes milliseconds, so the
object is built once and called many times::

    ex.actor(Segmenter, args=("cyto3",)) ─▶ start: (class, args, kwargs) pickled
        now, in the caller (errors name the culprit) ─▶ a Pool of one worker,
        outside the executor's max_workers, whose WELCOME carries them
        ─▶ the worker builds the object before READY (`_bayou_worker.actor`)
    seg.predict(image) ─▶ Actor.submit("predict", image) ─▶ a CALL task whose
        function record is (FN_ACTOR, "predict") ─▶ the worker calls the
        method of its object ─▶ RESULT ─▶ the BayouFuture

Everything a task has, a call has, because a call *is* a task of that pool:
calls run one at a time in submission order (one worker, a FIFO queue), the
waiting thread reads the result itself (`pool.follow`), progress, cooperative
cancel, `bayou.cancel`, heartbeats, `task_timeout` and the memory cap apply
per call, and the futures are real `concurrent.futures` futures.

Failures are the pool's rules with restarts counted (`pool.dispatch`,
"Restarts"): the call in flight when the process dies fails with its death's
error; while `max_restarts` allow, the pool builds the object again at once
(its state is lost) and the queued calls run on the new one; the death after
that breaks the pool and queued and later calls fail with `ActorDiedError`.
A constructor that raises fails every queued call with its own exception.
"""

from __future__ import annotations

import inspect
import pickle
import weakref
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol

from . import errors, submission
from .futures import BayouFuture
from .pool import Pool, WorkItem
from .worker import wire

if TYPE_CHECKING:
    from .boundary import TaskEncoder
    from .environment import Environment


class ActorPool(submission.TargetPool, Protocol):
    """What an actor needs of the pool its calls run on (a local `Pool`, or a
    persistent pool's actor on its host): what submitting needs, and these."""

    @property
    def broken_cause(self) -> BaseException | None: ...
    @property
    def processes(self) -> dict[int, Any]: ...
    @property
    def served(self) -> int: ...
    @property
    def deaths(self) -> int: ...

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None: ...


def target_label(cls: Any) -> str:
    """How messages name the actor's class: its qualname, or the string given."""
    if isinstance(cls, str):
        return cls.rpartition(":")[2] or cls
    return getattr(cls, "__qualname__", None) or type(cls).__name__


def check_target(cls: Any) -> None:
    """A class or a ``"module:Qualname"`` string; anything else is refused here."""
    if isinstance(cls, str):
        module, sep, qualname = cls.partition(":")
        if not (module and sep and qualname):
            raise ValueError(
                f"an actor's class given as a string must be 'module:Qualname', not {cls!r}"
            )
    elif not callable(cls):
        raise TypeError(f"an actor needs a class (or 'module:Qualname'), not {cls!r}")


def encode_constructor(
    encoder: TaskEncoder, cls: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[bytes, bytes], frozenset[str]]:
    """((pickled class, pickled (args, kwargs)), roots), pickled in the caller: an
    argument that cannot be pickled is named here (`boundary`), at `ex.actor(...)`."""
    label = target_label(cls)
    if isinstance(cls, str):
        cls_blob, roots = encoder.dumps(cls)
    else:
        try:
            cls_blob, roots = encoder.dumps(cls)
        except errors.PicklingError:
            raise
        except Exception as exc:
            raise errors.PicklingError(
                f"cannot pickle the actor's class {label}: {type(exc).__name__}: {exc}"
            ) from exc
    stub: Callable[..., Any] = submission.NamedCall(f"{label}.__init__")  # type: ignore[assignment]
    args_blob, arg_roots = encoder.call_args(stub, tuple(args), dict(kwargs))
    return (cls_blob, args_blob), roots | arg_roots


def start_local(
    environment: Environment,
    encoder: TaskEncoder,
    options: dict[str, Any],
    cls: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    max_restarts: int,
    env_vars: dict[str, str] | None,
) -> Pool:
    """An actor's pool in this process, started: its worker builds the object now."""
    blobs, roots = encode_constructor(encoder, cls, args, kwargs)
    return start_pool(
        environment,
        options,
        pickle_constructor(blobs),
        roots,
        max_restarts=max_restarts,
        env_vars=env_vars,
        title=f"actor {target_label(cls)}",
    )


def start_pool(
    environment: Environment,
    options: dict[str, Any],
    constructor: bytes,
    roots: frozenset[str],
    *,
    max_restarts: int,
    env_vars: dict[str, str] | None,
    title: str,
    settle: Callable[[WorkItem, int, Any], None] | None = None,
) -> Pool:
    """A started one-worker pool building `constructor` (`pickle_constructor`); also
    what a persistent pool's host runs for a client's actor (with its `settle`).

    `options` are the executor's pool options: its initializer runs first in
    the actor's process too, and its timeouts, memory cap, output and logs
    apply; `retries` do not (a call is not run twice on an object whose state
    it may have changed)."""
    variables = dict(env_vars or {})
    pool = Pool(
        environment,
        max_workers=1,
        initializer=options.get("initializer"),
        initializer_roots=frozenset(options.get("initializer_roots", ())) | roots,
        heartbeat_timeout=options.get("heartbeat_timeout", 10.0),
        task_timeout=options.get("task_timeout"),
        retries=0,
        max_memory_per_worker=options.get("max_memory_per_worker"),
        log_dir=options.get("log_dir"),
        output=options.get("output", "inherit"),
        worker_env=(lambda slot: variables) if variables else None,
        actor=constructor,
        max_restarts=max_restarts,
        title=title,
        settle=settle,
    )
    pool.start()
    return pool


def pickle_constructor(blobs: tuple[bytes, bytes]) -> bytes:
    """What WELCOME carries: the pickled class and the pickled (args, kwargs)."""
    return pickle.dumps(blobs, 4)


def check_options(cls: Any, max_restarts: Any, env_vars: Any) -> tuple[int, dict[str, str] | None]:
    """`ex.actor`'s arguments checked before anything is pickled or started (local
    and persistent pools alike): (max_restarts, a copy of env_vars)."""
    check_target(cls)
    if not isinstance(max_restarts, int) or isinstance(max_restarts, bool) or max_restarts < 0:
        raise ValueError(f"max_restarts must be an int >= 0, not {max_restarts!r}")
    if env_vars is None:
        return max_restarts, None
    if not isinstance(env_vars, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()
    ):
        raise TypeError(f"env_vars must be a dict of str to str, not {env_vars!r}")
    return max_restarts, dict(env_vars)


class Actor:
    """One object living in an env (`EnvExecutor.actor`); its methods return futures.

    ``actor.predict(x)`` and ``actor.submit("predict", x)`` are the same call.
    Calls run one at a time, in the order they were submitted, on a worker
    process of the actor's own. See docs/actors.md for what a crash does to
    the calls and to the object's state.
    """

    def __init__(
        self,
        pool: ActorPool,
        encoder: TaskEncoder,
        cls: Any,
        name: str | None,
        end_on_drop: bool = True,
    ) -> None:
        self._pool = pool
        self._encoder = encoder
        self._label = target_label(cls)
        self.name = name
        self._closed = False
        self._methods: dict[str, tuple[str, tuple[str, str], Any]] = {}  # per method name
        if end_on_drop:  # (not a persistent pool's named actor: that one is the pool's)
            # dropping the last reference ends the actor's process, after its calls
            weakref.finalize(self, pool.shutdown, False, False)

    # -- calls --------------------------------------------------------------------

    def submit(self, method: str, /, *args: Any, **kwargs: Any) -> BayouFuture[Any]:
        """Call ``method(*args, **kwargs)`` on the object; the future of its result."""
        if not isinstance(method, str):
            raise TypeError(f"an actor's method is named by a str, not {method!r}")
        if self._closed:
            raise RuntimeError(f"cannot schedule new calls after {self!r} was closed")
        pool = self._pool
        try:
            label, record, stub = self._methods[method]
        except KeyError:
            label = f"{self._label}.{method}"
            stub = submission.NamedCall(label)  # names the call in messages
            record = (wire.FN_ACTOR, method)
            self._methods[method] = label, record, stub
        if pool.broken is not None:
            return self._died(label)

        def make() -> WorkItem:
            return submission.encode_item(
                self._encoder, pool, stub, wire.CALL, (args, kwargs), fn_record=record
            )

        try:
            return submission.submit(pool, make)
        except BrokenProcessPool:
            return self._died(label)  # it died between the check and the submit

    def __getattr__(self, name: str) -> ActorMethod:
        if name.startswith("_"):  # copy, pickle and hasattr probes stay local
            raise AttributeError(name)
        return ActorMethod(self, name)

    def _died(self, label: str) -> BayouFuture[Any]:
        exc = errors.ActorDiedError(f"{self._pool.broken}: the call {label} was not run")
        exc.__cause__ = self._pool.broken_cause
        fut: BayouFuture[Any] = BayouFuture()
        fut.set_exception(exc)
        return fut

    # -- state --------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Not closed, and not dead for good (a restart in progress is alive)."""
        return not self._closed and self._pool.broken is None

    @property
    def pid(self) -> int | None:
        """The process holding (or building) the object now; None once it is dead."""
        pids = tuple(self._pool.processes)  # one C call: the supervisor changes it
        return pids[0] if pids else None

    @property
    def calls(self) -> int:
        """Calls answered so far (returned or raised), over all restarts."""
        return self._pool.served

    @property
    def restarts(self) -> int:
        """Deaths of its process so far (each one lost the object's state)."""
        return self._pool.deaths

    # -- ending -------------------------------------------------------------------

    def close(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """End the actor once its queued calls are done (as `Executor.shutdown`).

        ``cancel_futures=True`` cancels the queued calls and stops the running
        one (`bayou.cancel_requested()` turns True in it; killed if it has not
        returned a second later)."""
        self._closed = True
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)

    def __enter__(self) -> Actor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> Literal[False]:
        interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        self.close(wait=True, cancel_futures=interrupted)
        return False

    def __reduce__(self) -> Any:
        raise TypeError(
            f"{self!r} cannot be pickled: it stands for a process of this caller's "
            "(give a persistent pool's actor a name, and find it with .actor(name))"
        )

    def __repr__(self) -> str:
        named = f" {self.name!r}" if self.name else ""
        state = f"pid {self.pid}" if self.alive else ("closed" if self._closed else "dead")
        return f"<bayou.Actor{named} {self._label} ({state})>"


_handle_classes: weakref.WeakKeyDictionary[type, type[Actor]] = weakref.WeakKeyDictionary()


def handle_class(cls: Any) -> type[Actor]:
    """The handle's class for an actor of `cls`: `Actor` with one method per public
    method of `cls` (not shadowing the handle's own names), so ``actor.predict`` is a
    plain method lookup (no failed lookup and `__getattr__` per call, which cost
    about 3 us) and shows in ``dir()`` and completion. A class named by a string is
    not known here: its handle is a plain `Actor`."""
    if not isinstance(cls, type):
        return Actor
    found = _handle_classes.get(cls)
    if found is None:
        methods: dict[str, Any] = {}
        for name in dir(cls):
            if name.startswith("_") or hasattr(Actor, name):
                continue
            try:
                attr = inspect.getattr_static(cls, name)
            except AttributeError:
                continue
            if callable(attr) or isinstance(attr, (staticmethod, classmethod)):
                methods[name] = _forwarder(name, getattr(attr, "__doc__", None))
        found = type("Actor", (Actor,), {"__module__": __name__, **methods})
        _handle_classes[cls] = found
    return found


def _forwarder(name: str, doc: str | None) -> Callable[..., BayouFuture[Any]]:
    def call(self: Actor, /, *args: Any, **kwargs: Any) -> BayouFuture[Any]:
        return self.submit(name, *args, **kwargs)

    call.__name__ = name
    call.__qualname__ = f"Actor.{name}"
    call.__doc__ = doc
    return call


class ActorMethod:
    """``actor.predict``: calling it submits the call and returns its future."""

    def __init__(self, actor: Actor, name: str) -> None:
        self._actor = actor
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> BayouFuture[Any]:
        return self._actor.submit(self._name, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<method {self._name!r} of {self._actor!r}>"


__all__ = ["Actor", "ActorMethod"]
