"""Which `distributed` bayou.dask works with, checked once at import.

bayou.dask relies on how a dask worker hands a task to an executor named in
the task's ``executor`` annotation: ``executor.submit(_run_task_simple,
run_spec, data, scheduler_delay)`` where ``run_spec`` is a ``dask._task_spec``
node. That calling convention exists since distributed 2025.1.0; older
releases pass other objects, so they are refused with a message saying what
to upgrade rather than failing obscurely on the first task.
"""

from __future__ import annotations

from packaging.version import Version

MIN_DISTRIBUTED = "2025.1.0"


class UnsupportedDistributedError(ImportError):
    """The installed `distributed` is older than bayou.dask supports."""


def check_distributed() -> str:
    """Return the installed distributed's version, or raise naming the minimum."""
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(
            "bayou.dask needs the 'distributed' package: pip install 'bayou[dask]'"
        ) from exc
    version = distributed.__version__
    try:
        too_old = Version(version) < Version(MIN_DISTRIBUTED)
    except Exception:  # an unparsable dev version: trust the feature check below
        too_old = False
    from distributed import worker

    if too_old or not hasattr(worker, "_run_task_simple"):
        raise UnsupportedDistributedError(
            f"bayou.dask needs distributed >= {MIN_DISTRIBUTED}; this is distributed "
            f"{version} (pip install -U 'distributed>={MIN_DISTRIBUTED}')"
        )
    return version
