"""Tasks for the Ctrl-C tests (stdlib only): each leaves a trace of how far it got."""

import os
import time


def mark_and_sleep(directory, i, seconds):
    """Mark `started-i`, sleep without looking at `cancel_requested`, then mark `done-i`."""
    open(os.path.join(directory, f"started-{i}"), "w").close()
    time.sleep(seconds)
    open(os.path.join(directory, f"done-{i}"), "w").close()
    return i
