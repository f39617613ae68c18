"""Stand-in for `bayou` inside an environment that does not have bayou installed.

The worker runtime appends the directory holding this module to the END of
`sys.path`, so `import bayou` finds it only when the environment has no real
bayou. It offers the in-task API; everything else of bayou lives in the
caller.

The caller's main script is imported in a worker of another Python version
to find the functions defined there (`mainscript`), and such a script
usually says ``import bayou`` and ``ENV = bayou.Env(...)`` at its top level.
So any other public name is an inert stand-in: it can be called, and its
attributes read, at import time; using one for real work (``with
bayou.EnvExecutor(...)``) raises an error that says why.
"""

from _bayou_worker.context import cancel_requested, report_progress

__bayou_shim__ = True
__all__ = ["cancel_requested", "report_progress"]


class _StandIn:
    """What ``bayou.<name>`` is inside a worker: inert until used."""

    def __init__(self, name):
        self._bayou_name = name

    def __call__(self, *args, **kwargs):
        return _StandIn(self._bayou_name + "(...)")

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _StandIn("%s.%s" % (self._bayou_name, attr))

    def __repr__(self):
        return "<bayou stand-in %s (bayou is not installed in this env)>" % self._bayou_name

    def __enter__(self):
        raise RuntimeError(
            "%s cannot run inside a bayou worker: this env does not have bayou, and the "
            "caller's main script was imported here only to find the functions it "
            'defines. Keep such code under `if __name__ == "__main__":`.' % self._bayou_name
        )

    def __exit__(self, *exc):
        return False

    def __iter__(self):
        self.__enter__()


def __getattr__(name):
    if name.startswith("_"):
        raise AttributeError("module 'bayou' has no attribute %r" % (name,))
    return _StandIn("bayou." + name)
