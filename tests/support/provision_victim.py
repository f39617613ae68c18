"""A provisioning process for the fault tests to kill: ``python -m
tests.support.provision_victim CONFIG_JSON``.

It provisions one env into a given store and tells the test, one line at a
time on stdout, where it is, so the test can SIGKILL it at a chosen moment:

    ready                       imports done, about to call provision()
    stage <name> <done>         a progress event (solve, download, link, venv, pip, publish)
    hook <name>                 paused at a hook point, waiting to be killed
    done <prefix>               provision() returned

Hook points are the moments inside bayou's own code that a timer would
rarely hit, reached by wrapping the store's functions in this process only
(the library has no test hooks):

    before-rename   the record is written in the build dir; the publishing
                    rename has not happened
    after-rename    the env was renamed into envs/; the directory fsync and
                    the "done" event have not happened

With ``"pause_at": NAME`` the process prints ``hook NAME`` there and sleeps
(a test that fails to kill it gets a finished build after 120 s instead of a
hang). Without it, hooks are only announced.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    config = json.loads(argv[0])
    import bayou
    import bayou.store as store_module

    pause_at = config.get("pause_at")

    def hook(name: str) -> None:
        if name == pause_at:
            print(f"hook {name}", flush=True)
            time.sleep(120)

    real_rename = store_module.os.rename
    real_fsync_dir = store_module._fsync_dir
    envs_dir = Path(config["store"]) / "envs"

    class PatchedOs:
        """`os` as bayou.store sees it, with the publishing rename observed."""

        def __getattr__(self, name):
            return getattr(store_module.__dict__["_real_os"], name)

        @staticmethod
        def rename(src, dst, *args, **kwargs):
            publishing = Path(dst).parent == envs_dir
            if publishing:
                hook("before-rename")
            real_rename(src, dst, *args, **kwargs)

    def fsync_dir(path):
        if Path(path) == envs_dir:
            hook("after-rename")
        real_fsync_dir(path)

    store_module.__dict__["_real_os"] = store_module.os
    store_module.os = PatchedOs()
    store_module._fsync_dir = fsync_dir

    spec = config["env"]
    env = bayou.Env(**spec)
    store = bayou.Store(config["store"], pkgs_dir=config["pkgs"])

    def progress(event) -> None:
        print(f"stage {event.stage} {event.done}", flush=True)

    print("ready", flush=True)
    built = bayou.provision(env, progress=progress, store=store)
    print(f"done {built.prefix}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
