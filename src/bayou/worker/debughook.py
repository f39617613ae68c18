"""Debug workers (``EnvExecutor(..., debug=True)``): listen with debugpy before READY.

Runs inside the worker (stdlib-only, Python 3.8+). The caller puts its own
debugpy on the worker's path (appended after the env's packages, see
`bayou.worker.deploy.ensure_debugpy`), nothing is installed into the env.
debugpy listens *in process* (no adapter subprocess that could outlive the
worker) on a free loopback port; the worker writes ``<pid>.json`` with that
port into the pool's private debug directory, where the caller's
`ex.debug_ports` and ``bayou debug NAME`` find it, and says so on stderr (so
it also lands in the worker's log).
"""

from __future__ import annotations

import json
import os
import sys


def start(options) -> None:
    if options.get("pure_python"):
        # the caller's compiled speedups are for another Python: don't try them
        os.environ.setdefault("PYDEVD_USE_CYTHON", "NO")
        os.environ.setdefault("PYDEVD_USE_FRAME_EVAL", "NO")
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    try:
        import debugpy

        address = (options.get("host", "127.0.0.1"), int(options.get("port", 0)))
        try:
            host, port = debugpy.listen(address, in_process_debug_adapter=True)
        except TypeError:  # a debugpy older than 1.8.1 (the env's own)
            host, port = debugpy.listen(address)
    except BaseException as exc:
        sys.stderr.write(
            "bayou: debug=True but debugpy cannot listen in this worker: %s: %s\n"
            % (type(exc).__name__, exc)
        )
        raise
    record = {
        "pid": os.getpid(),
        "host": host,
        "port": port,
        "python": sys.version.split()[0],
        "debugpy": getattr(debugpy, "__version__", "?"),
        "debugpy_file": getattr(debugpy, "__file__", None),
    }
    directory = options["dir"]
    tmp = os.path.join(directory, ".%d.tmp" % os.getpid())
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, os.path.join(directory, "%d.json" % os.getpid()))
    sys.stderr.write(
        "bayou: worker pid %d: debugpy listens on %s:%d\n" % (os.getpid(), host, port)
    )
    if options.get("wait"):
        debugpy.wait_for_client()
