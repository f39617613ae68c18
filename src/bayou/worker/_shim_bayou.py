"""Stand-in for `bayou` inside an environment that does not have bayou installed.

The worker runtime appends the directory holding this module to the END of
`sys.path`, so `import bayou` finds it only when the environment has no real
bayou. It offers just the in-task API; everything else of bayou lives in the
caller.
"""

from _bayou_worker.context import cancel_requested, report_progress

__bayou_shim__ = True
__all__ = ["cancel_requested", "report_progress"]
