"""Stand-ins for micromamba, conda and pixi: same command lines, our own installer.

None of the real tools can be downloaded on the test machines, so each
stand-in (``micromamba``, ``conda``, ``pixi`` next to this file) accepts the
command line the real tool documents, rejects what it would reject (an
unknown flag, a missing ``--yes``, a non-empty non-env prefix, no
``--override-channels``), records what it was called with, and then really
builds the environment with bayou's own rattler child from the given
channels, so the env it leaves behind runs Python:

    argv ─▶ $BAYOU_FAKE_TOOL_LOG (one JSON line: tool, argv, cwd, cache vars)
         ─▶ rattler_child.py REQUEST (specs, channels, the prefix; placeholders
            point at --relocate-prefix when given, else at the prefix itself,
            as the real tools do) ─▶ the prefix, conda-meta/ and all
         ─▶ exit 0, or the tool's style of error on stderr and exit 1

Test knobs: ``$BAYOU_FAKE_TOOL_SLEEP`` (seconds to wait first: timeouts),
``$BAYOU_FAKE_TOOL_VERSION``. The scripts run under the interpreter of their
shebang line; tests copy them with the test interpreter's path there (see
``install_fake_tools`` in tests/test_external_backends.py) and point
``$BAYOU_FAKE_TOOLS_DIR`` here so a copy finds this module.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VERSIONS = {"micromamba": "2.3.0", "conda": "conda 24.11.3", "pixi": "pixi 0.66.0"}

# flag -> takes a value?
CREATE_FLAGS = {
    "micromamba": {
        "-y": False, "--yes": False, "-p": True, "--prefix": True, "--relocate-prefix": True,
        "-r": True, "--root-prefix": True, "--no-rc": False, "--override-channels": False,
        "-c": True, "--channel": True, "--offline": False,
    },
    "conda": {
        "-y": False, "--yes": False, "-p": True, "--prefix": True, "-q": False,
        "--quiet": False, "--no-default-packages": False, "--override-channels": False,
        "-c": True, "--channel": True, "--offline": False,
    },
}  # fmt: skip
CANONICAL = {"-y": "--yes", "-p": "--prefix", "-r": "--root-prefix", "-c": "--channel"}
CANONICAL["-q"] = "--quiet"


def main(tool: str) -> int:
    argv = sys.argv[1:]
    _record(tool, argv)
    if argv == ["--version"]:
        print(os.environ.get("BAYOU_FAKE_TOOL_VERSION") or VERSIONS[tool])
        return 0
    time.sleep(float(os.environ.get("BAYOU_FAKE_TOOL_SLEEP") or 0))
    if tool == "pixi":
        return _pixi(argv)
    return _create(tool, argv)


def _record(tool: str, argv: list[str]) -> None:
    log = os.environ.get("BAYOU_FAKE_TOOL_LOG")
    if not log:
        return
    keys = ("CONDA_PKGS_DIRS", "PIXI_CACHE_DIR", "MAMBA_ROOT_PREFIX")
    entry = {
        "tool": tool,
        "argv": argv,
        "cwd": os.getcwd(),
        "env": {k: os.environ.get(k) for k in keys},
    }
    with open(log, "a") as fh:
        fh.write(json.dumps(entry) + "\n")


def _usage(tool: str, message: str) -> int:
    if tool == "micromamba":
        sys.stderr.write(f"The following argument was not expected: {message}\n")
    else:
        sys.stderr.write(f"usage: conda create [-h] ...\nconda create: error: {message}\n")
    return 2


def _create(tool: str, argv: list[str]) -> int:
    if not argv or argv[0] != "create":
        return _usage(tool, f"unknown subcommand {argv[:1]}")
    flags = CREATE_FLAGS[tool]
    options: dict[str, list[str]] = {}
    specs: list[str] = []
    args = iter(argv[1:])
    for arg in args:
        if arg.startswith("-"):
            if arg not in flags:
                return _usage(tool, arg)
            value = next(args, None) if flags[arg] else ""
            if value is None:
                return _usage(tool, f"{arg} needs a value")
            options.setdefault(CANONICAL.get(arg, arg), []).append(value)
        else:
            specs.append(arg)
    prefix = Path(options.get("--prefix", [""])[-1])
    if not str(prefix) or not prefix.is_absolute():
        return _usage(tool, "an absolute --prefix is required here")
    if "--override-channels" not in options:
        sys.stderr.write("fake: without --override-channels the user's channels would be used\n")
        return 1
    print(f"\nTransaction\n\n  Prefix: {prefix}\n\n  Updating specs:\n")
    for spec in specs:
        print(f"   - {spec}")
    sys.stdout.flush()
    if "--yes" not in options:
        print("\nConfirm changes: [Y/n] ")
        sys.stderr.write("Aborted.\n")  # stdin is not a terminal: nobody said yes
        return 1
    if prefix.exists() and any(prefix.iterdir()) and not (prefix / "conda-meta").is_dir():
        sys.stderr.write(f"critical libmamba Non-conda folder exists at prefix {prefix}\n")
        return 1
    target = options.get("--relocate-prefix", [str(prefix)])[-1]
    cache = (os.environ.get("CONDA_PKGS_DIRS") or "").split(",")[0]
    channels = options.get("--channel", [])
    ok, message = _install(specs, channels, prefix, target, cache, "--offline" in options)
    shutil.rmtree(prefix / ".bayou", ignore_errors=True)  # the real tools write no such thing
    if ok:
        print("\nTransaction finished\n")
        return 0
    if tool == "micromamba":
        indented = "\n".join("    " + line for line in message.splitlines())
        sys.stderr.write(
            "error    libmamba Could not solve for environment specs\n"
            f"{indented}\ncritical libmamba Could not solve for environment specs\n"
        )
    else:
        sys.stderr.write(
            f"\nLibMambaUnsatisfiableError: Encountered problems while solving:\n  - {message}\n"
        )
    return 1


def _pixi(argv: list[str]) -> int:
    import tomllib

    if argv[:1] != ["install"]:
        sys.stderr.write(f"error: unrecognized subcommand {argv[:1]}\n")
        return 2
    manifest = None
    rest = argv[1:]
    while rest:
        arg = rest.pop(0)
        if arg == "--manifest-path" and rest:
            manifest = Path(rest.pop(0))
        elif arg.startswith("--manifest-path="):
            manifest = Path(arg.split("=", 1)[1])
        else:
            sys.stderr.write(f"error: unexpected argument '{arg}' found\n")
            return 2
    if manifest is None or not manifest.is_file():
        sys.stderr.write("  × could not find pixi.toml or pyproject.toml\n")
        return 1
    data = tomllib.loads(manifest.read_text())
    workspace = data.get("workspace") or {}
    platform = _platform()
    if platform not in workspace.get("platforms", []):
        sys.stderr.write(f"  × the workspace does not support '{platform}'\n")
        return 1
    specs = []
    for name, value in (data.get("dependencies") or {}).items():
        fields = value if isinstance(value, dict) else {"version": value}
        spec = name
        version = fields.get("version", "*")
        if version != "*" or fields.get("build"):
            spec += f" {version}"
        if fields.get("build"):
            spec += f" {fields['build']}"
        if fields.get("channel"):
            spec = f"{fields['channel']}::{spec}"
        specs.append(spec)
    prefix = manifest.parent / ".pixi" / "envs" / "default"
    cache = os.environ.get("PIXI_CACHE_DIR") or os.environ.get("RATTLER_CACHE_DIR") or ""
    ok, message = _install(
        specs, workspace.get("channels", []), prefix, str(prefix), cache and f"{cache}/pkgs"
    )
    lock = prefix / ".bayou" / "conda-lock.yml"
    if ok and lock.is_file():
        os.replace(lock, manifest.parent / "pixi.lock")
    shutil.rmtree(prefix / ".bayou", ignore_errors=True)
    if ok:
        print(f"✔ The default environment has been installed in {prefix}")
        return 0
    sys.stderr.write(
        f"Error:   × failed to solve the conda requirements of 'default' '{platform}'\n"
        f"  ╰─▶ {message}\n"
    )
    return 1


def _install(
    specs: list[str],
    channels: list[str],
    prefix: Path,
    target: str,
    cache: str,
    offline: bool = False,
) -> tuple[bool, str]:
    """Build the env with bayou's rattler child; (ok, error message). `--offline`
    makes it solve from the package cache only, as the real tools do."""
    spec = importlib.util.find_spec("bayou")
    assert spec is not None and spec.origin is not None, "bayou must be importable"
    child = Path(spec.origin).parent / "provision" / "rattler_child.py"
    scratch = Path(tempfile.mkdtemp(prefix="fake-tool-"))
    cache_dir = Path(cache) if cache else scratch / "pkgs"
    try:
        request = {
            "specs": specs,
            "channels": channels,
            "platform": _platform(),
            "build_prefix": str(prefix),
            "final_prefix": target,
            "package_cache": str(cache_dir),
            "repodata_cache": str(cache_dir / "repodata-fake"),
            "result_path": str(scratch / "result.json"),
            "offline": offline,
        }
        (scratch / "request.json").write_text(json.dumps(request))
        proc = subprocess.run(
            [sys.executable, str(child), str(scratch / "request.json")],
            capture_output=True,
            text=True,
        )
        try:
            answer = json.loads((scratch / "result.json").read_text())
        except (OSError, ValueError):
            return False, f"installer died ({proc.returncode}): {proc.stderr}"
        return bool(answer["ok"]), answer.get("message", "")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _platform() -> str:
    from bayou.env import conda_platform

    return conda_platform()
