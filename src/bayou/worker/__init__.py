"""The worker runtime: the code that runs inside the target environment's Python.

Everything in this package is stdlib-only and runs on Python 3.8-3.13,
because `deploy.ensure_runtime()` copies it into a runtime directory where
the worker imports it as ``_bayou_worker`` (the env does not have bayou
installed and is never modified). The caller imports `wire` and `deploy` from
here as ``bayou.worker.*``.

Data flow inside a worker process (see `main`)::

    stdin ──key──▶ main ──connect+auth──▶ caller's Unix socket
    main thread:  recv TASK ─▶ codec.load ─▶ fn(*args) ─▶ codec.dump ─▶ send RESULT
    io thread:    every tick: parent alive?  heartbeat due?  CANCEL frames?  progress?
    fd 1 / fd 2:  pipes read by the caller (never the protocol socket)
"""
