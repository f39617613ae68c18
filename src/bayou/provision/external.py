"""The conda half of a build done by micromamba, pixi or conda instead of py-rattler.

Which backend builds the conda part: ``Env(backend=...)``, else
``$BAYOU_BACKEND``, else py-rattler (`conda_step`). The backend changes how
an env is built, not what is in it, so it is not part of ``Env.hash``; the
record says which tool built the env (``backend``, ``backend_tool``).

    find_tool(name)   $BAYOU_<TOOL> ─▶ PATH ─▶ <store>/tools/ ─▶ download
                      (micromamba, pixi; only with allow_download=True or
                      $BAYOU_ALLOW_DOWNLOAD=1, see `download`; never
                      offline: the error then says what was looked at)
    <tool> --version                  (also proves the executable runs)
    the tool builds the env at builds/<hash>-x/.bayou/<tool>-prefix
        micromamba create --yes --prefix P --relocate-prefix FINAL ...
        conda create --yes --prefix P --override-channels -c ... SPECS
        pixi install --manifest-path .bayou/pixi/pixi.toml  (a generated
                      manifest; the env lands in .bayou/pixi/.pixi/envs/default)
      │ exit code != 0 ─▶ ProvisionError naming the spec at fault, with the output
      ▼
    its files are moved up into builds/<hash>-x/ (same file system: renames)
    `relocate`: the prefix the tool wrote into files ─▶ the final envs/<hash>
    records read from conda-meta/*.json (the same fields the rattler path keeps)

From there `provision` goes on exactly as for a rattler build: pip part,
activation computed from the files, record, atomic publish. Every command is
run directly by `run_tool` (no shell, no activation hooks, no temporary
scripts), killable, under the provision deadline. Package caches are per tool
(``<pkgs>/micromamba``, ``<pkgs>/conda-tool``, ``<pkgs>/pixi``): their formats
and locking are the tools' own business. Offline, micromamba and conda run
with ``--offline`` (their cached repodata and packages only); pixi is refused,
as bayou cannot make it promise to stay off the network.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..env import BACKENDS, Env, conda_platform, conda_spec_name
from ..errors import ProvisionError, SpecError
from ..store import Store
from . import download
from .relocate import relocate
from .tools import Deadline, ToolResult, run_tool

EXTERNAL = ("micromamba", "pixi", "conda")
_CACHE_NAMES = {"micromamba": "micromamba", "conda": "conda-tool", "pixi": "pixi"}
_TRUE = ("1", "true", "yes", "on")


def selected_backend(env: Env) -> str:
    """The backend that builds `env`'s conda part: the Env's, $BAYOU_BACKEND's, or rattler."""
    if env.backend:
        return env.backend
    value = os.environ.get("BAYOU_BACKEND", "").strip().lower()
    if not value:
        return "rattler"
    if value not in BACKENDS:
        raise SpecError(
            f"$BAYOU_BACKEND must be one of {', '.join(BACKENDS)}",
            entry=os.environ["BAYOU_BACKEND"],
        )
    return value


def download_allowed(allow_download: bool | None) -> bool:
    if allow_download is not None:
        return allow_download
    return os.environ.get("BAYOU_ALLOW_DOWNLOAD", "").strip().lower() in _TRUE


@dataclass(frozen=True)
class Tool:
    """An external conda tool found (or fetched) for a build."""

    name: str
    path: Path
    source: str  # "$BAYOU_MICROMAMBA", "PATH", "store" or "downloaded"


def find_tool(
    name: str,
    store: Store,
    *,
    allow_download: bool | None = None,
    deadline: Deadline | None = None,
    offline: bool = False,
) -> Tool:
    """Locate `name`: configured path, PATH, the store's copy, else download if allowed
    (never `offline`)."""
    variable = f"BAYOU_{name.upper()}"
    configured = os.environ.get(variable)
    if configured:
        path = Path(configured).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ProvisionError(
                f"${variable} is {configured!r}, which is not an executable file", package=name
            )
        return Tool(name, path.absolute(), f"${variable}")
    on_path = shutil.which(name)
    if on_path:
        return Tool(name, Path(on_path), "PATH")
    stored = download.installed(name, store)
    if stored is not None:
        return Tool(name, stored, "store")
    looked = f"looked at ${variable} (unset), PATH, {download.tools_dir(store)}"
    if name not in download.DOWNLOADABLE:
        raise ProvisionError(
            f"backend {name!r} needs a {name} executable and none was found ({looked}); "
            f"install conda (e.g. Miniforge) or set ${variable}",
            package=name,
        )
    if offline:
        raise ProvisionError(
            f"backend {name!r} needs a {name} executable and none was found ({looked}); "
            f"offline ($BAYOU_OFFLINE), bayou does not download it: install it or set "
            f"${variable}",
            package=name,
        )
    if not download_allowed(allow_download):
        release = download.release_for(name)
        raise ProvisionError(
            f"backend {name!r} needs a {name} executable and none was found ({looked}). "
            f"Install it, set ${variable}, or allow bayou to download {name} "
            f"{release.version} from {release.url} into the store "
            f"(provision(..., allow_download=True) or $BAYOU_ALLOW_DOWNLOAD=1)",
            package=name,
        )
    return Tool(name, download.fetch_tool(name, store, deadline=deadline), "downloaded")


def solve_and_install(
    env: Env,
    backend: str,
    store: Store,
    build_dir: Path,
    final_prefix: Path,
    deadline: Deadline,
    on_event: Callable[[dict[str, Any]], None],
    *,
    allow_download: bool | None = None,
    offline: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Build the conda part of `env` into `build_dir` with `backend`.

    Returns the installed conda records and what to record about the tool.
    """
    if backend not in EXTERNAL:
        raise ValueError(f"not an external backend: {backend!r}")

    def emit(stage: str, done: int | None = None, total: int | None = None, msg: str = "") -> None:
        on_event(
            {"event": "progress", "stage": stage, "done": done, "total": total, "message": msg}
        )

    if offline and backend == "pixi":
        raise ProvisionError(
            "offline ($BAYOU_OFFLINE): the pixi backend cannot be told to stay off the "
            "network when it solves; use the default rattler backend (or micromamba), "
            "which build from the package cache offline",
            package="pixi",
        )
    emit("solve", msg=f"finding {backend}")
    tool = find_tool(
        backend, store, allow_download=allow_download, deadline=deadline, offline=offline
    )
    version = _tool_version(tool, deadline)
    meta = build_dir / ".bayou"
    meta.mkdir(parents=True, exist_ok=True)
    cache = store.pkgs_dir / _CACHE_NAMES[backend]
    cache.mkdir(parents=True, exist_ok=True)
    tool_env = dict(os.environ)
    if backend == "pixi":
        workdir = meta / "pixi"
        workdir.mkdir()
        manifest = workdir / "pixi.toml"
        manifest.write_text(pixi_manifest(env))
        tool_prefix = workdir / ".pixi" / "envs" / "default"
        argv = [str(tool.path), "install", "--manifest-path", str(manifest)]
        tool_env["PIXI_CACHE_DIR"] = str(cache)
    else:
        tool_prefix = meta / f"{backend}-prefix"
        argv = create_argv(backend, tool.path, env, tool_prefix, final_prefix, store)
        if offline:
            argv.insert(2, "--offline")  # `<tool> create --offline ...`
        tool_env["CONDA_PKGS_DIRS"] = str(cache)
    emit("solve", 0, None, f"{backend} {version}: solving and installing")
    result = run_tool(
        argv,
        deadline=deadline,
        env=tool_env,
        what=f"creating the conda environment with {backend}",
        cwd=str(meta),
    )
    if result.returncode != 0:
        error = _failure(env, backend, result)
        if offline:
            error.args = (f"offline ($BAYOU_OFFLINE; {backend} used only {cache}): {error}",)
        raise error
    if not (tool_prefix / "conda-meta").is_dir():
        raise ProvisionError(
            f"{backend} exited successfully but left no conda environment at {tool_prefix}",
            output=result.output,
        )
    deadline.check("moving the environment into place")
    _move_contents(tool_prefix, build_dir)
    if backend == "pixi":
        lock = workdir / "pixi.lock"
        if lock.is_file():  # pixi's lock file format is rattler's: `bayou env export` uses it
            os.replace(lock, meta / "conda-lock.yml")
        os.replace(manifest, meta / "pixi.toml")
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        shutil.rmtree(tool_prefix, ignore_errors=True)
    emit("link", msg="relocating")
    relocate(build_dir, str(tool_prefix), str(final_prefix))
    records = read_conda_meta(build_dir)
    if not records:
        raise ProvisionError(f"{backend} installed no conda packages", output=result.output)
    emit("link", len(records), len(records), f"{len(records)} packages")
    tool_info = {
        "name": backend,
        "path": str(tool.path),
        "version": version,
        "source": tool.source,
    }
    return records, tool_info


def create_argv(
    backend: str, executable: Path, env: Env, prefix: Path, final_prefix: Path, store: Store
) -> list[str]:
    """The command line that makes `backend` create `env`'s conda part at `prefix`."""
    argv = [str(executable), "create", "--yes", "--prefix", str(prefix)]
    if backend == "micromamba":
        # Link for the final path directly; --no-rc: the user's .mambarc must not
        # change what a spec means; the root prefix keeps micromamba out of ~.
        argv += ["--relocate-prefix", str(final_prefix)]
        argv += ["--root-prefix", str(download.tools_dir(store) / "micromamba-root"), "--no-rc"]
    else:
        argv += ["--quiet", "--no-default-packages"]
    argv.append("--override-channels")
    for channel in env.channels:
        argv += ["--channel", channel]
    return argv + list(env.conda)


def pixi_manifest(env: Env) -> str:
    """A pixi.toml whose default environment is `env`'s conda part."""
    lines = [
        "[workspace]",
        f"name = {json.dumps('bayou-' + env.hash)}",
        f"channels = {json.dumps(list(env.channels))}",
        f"platforms = {json.dumps([conda_platform()])}",
        "",
        "[dependencies]",
    ]
    for spec in env.conda:
        name, fields = pixi_dependency(spec)
        if set(fields) == {"version"}:
            value = json.dumps(fields["version"])
        else:
            value = "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in fields.items()) + " }"
        lines.append(f"{json.dumps(name)} = {value}")
    return "\n".join(lines) + "\n"


def pixi_dependency(spec: str) -> tuple[str, dict[str, str]]:
    """A canonical conda match spec as a pixi dependency: (name, {version, build, channel})."""
    fields: dict[str, str] = {}
    text = spec
    if "::" in text:
        fields["channel"], text = text.split("::", 1)
    name = conda_spec_name(text)
    rest = text[len(name) :]
    if "[" in rest:
        rest, _, bracket = rest.partition("[")
        for item in bracket.rstrip("]").split(","):
            key, _, value = item.partition("=")
            if key.strip() in ("version", "build", "build_number", "channel"):
                fields[key.strip()] = value.strip().strip("'\"")
    rest = rest.strip()
    version = build = ""
    if rest.startswith("=") and not rest.startswith("=="):
        # conda's `name=1.2` means 1.2.*, `name=1.2=b` adds a build
        version, _, build = rest[1:].partition("=")
        if version and not version.endswith("*") and not any(c in version for c in "<>|,!"):
            version += ".*"
    elif " " in rest:
        version, _, build = rest.partition(" ")
    else:
        version = rest
    fields.setdefault("version", version or "*")
    if build:
        fields.setdefault("build", build)
    order = ("version", "build", "build_number", "channel")
    return name, {k: fields[k] for k in order if k in fields}


def read_conda_meta(prefix: Path) -> list[dict[str, Any]]:
    """The installed conda packages, from the records every installer writes."""
    records = []
    for path in sorted((prefix / "conda-meta").glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or "name" not in data:
            continue
        records.append(
            {
                "name": data["name"],
                "version": str(data.get("version", "")),
                "build": str(data.get("build", "")),
                "channel": str(data.get("channel", "")),
                "subdir": str(data.get("subdir", "")),
                "url": str(data.get("url", "")),
                "file_name": str(data.get("fn", "")),
                "sha256": data.get("sha256"),
                "md5": data.get("md5"),
            }
        )
    return records


def _tool_version(tool: Tool, deadline: Deadline) -> str:
    result = run_tool(
        [str(tool.path), "--version"], deadline=deadline, what=f"asking {tool.name} its version"
    )
    lines = (result.stdout or result.stderr).strip().splitlines()
    if result.returncode != 0 or not lines:
        raise ProvisionError(
            f"the {tool.name} at {tool.path} (from {tool.source}) does not run "
            f"(`--version` exited with {result.returncode})",
            package=tool.name,
            output=result.output,
        )
    return lines[0].split()[-1]


def _move_contents(source: Path, dest: Path) -> None:
    for item in source.iterdir():
        target = dest / item.name
        if item.name == ".bayou" or target.exists():
            raise ProvisionError(f"unexpected {item.name!r} in the environment the tool built")
        os.rename(item, target)


def _failure(env: Env, backend: str, result: ToolResult) -> ProvisionError:
    from .rattler_child import _culprit

    specs = list(env.conda)
    # The tools echo the requested specs on stdout: look for the culprit in the
    # error stream first, so a mere mention there does not count as a finding.
    package = _culprit(result.stderr, specs) or _culprit(result.stdout, specs)
    about = f" for {package!r}" if package else ""
    tail = [ln for ln in (result.stderr or result.stdout).strip().splitlines() if ln.strip()]
    excerpt = "\n".join(tail[-15:])
    return ProvisionError(
        f"{backend} could not create the conda environment{about} from channels "
        f"{', '.join(env.channels)} (exit code {result.returncode}):\n{excerpt}",
        package=package,
        channels=tuple(env.channels),
        output=result.output,
    )
