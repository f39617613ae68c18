"""``pixi.toml`` as an env spec, and pixi's dependency tables wherever they are.

pixi writes what an env needs in the same tables in three places, so they
share one reader:

    pixi.toml:                    [dependencies], [pypi-dependencies]
    pyproject.toml / a script:    [tool.pixi.dependencies], [tool.pixi.pypi-dependencies]
        │ `pixi_dependencies`: each entry checked, its line kept (a script's
        ▼ block adds its offset in the script)
    conda specs, pip requirements ──▶ `EnvArgs` (with [workspace] channels and
                                       [activation.env]) for `Env.from_file`

`specfiles` reads a pixi.toml with it, `pyproject` the ``[tool.pixi]`` table;
both parse their TOML with `load_toml`, whose `SpecError` gives the line in
the file (a script block's lines counted from the script's start).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from .errors import SpecError
from .spec_entries import (
    DEFAULT_CHANNELS,
    EnvArgs,
    normalize_conda_spec,
    normalize_pip_requirement,
)

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def read_pixi_toml(path: Path) -> EnvArgs:
    source = str(path)
    text = path.read_text()
    data = load_toml(text, source)
    meta = data.get("workspace") or data.get("project") or {}
    channels = list(meta.get("channels", [])) or list(DEFAULT_CHANNELS)
    conda, pip, lines = pixi_dependencies(data, text, source)
    env_vars = data.get("activation", {}).get("env", {})
    return EnvArgs(
        conda=conda,
        pip=pip,
        channels=channels,
        env_vars=env_vars,
        name=meta.get("name"),
        source=source,
        lines=lines,
    )


def load_toml(text: str, source: str, offset: int = 0) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise SpecError(
            f"invalid TOML: {exc}",
            file=source,
            line=int(match.group(1)) + offset if match else None,
        )


def pixi_dependencies(
    data: dict[str, Any], text: str, source: str, offset: int = 0, *, skip_local: bool = False
) -> tuple[list[str], list[str], dict[str, int | None]]:
    """(conda specs, pip requirements, line of each) of pixi's dependency tables.

    `offset` is added to line numbers (a TOML block inside a script);
    `skip_local` leaves out path dependencies (a pyproject's own project)."""
    conda: list[str] = []
    lines: dict[str, int | None] = {}
    for name, spec in data.get("dependencies", {}).items():
        line = _toml_line(text, name, offset)
        if isinstance(spec, dict):
            version = spec.get("version", "*")
            if "channel" in spec:
                name = f"{spec['channel']}::{name}"
            spec = version
        if not isinstance(spec, str):
            raise SpecError("expected a version string", file=source, line=line, entry=name)
        entry = name if spec.strip() in ("", "*") else f"{name} {spec.strip()}"
        normalize_conda_spec(entry, file=source, line=line)
        conda.append(entry)
        lines[entry] = line
    pip: list[str] = []
    for name, spec in data.get("pypi-dependencies", {}).items():
        line = _toml_line(text, name, offset)
        extras = ""
        if isinstance(spec, dict):
            if skip_local and "path" in spec:
                continue
            if set(spec) - {"version", "extras"}:
                raise SpecError(
                    "only 'version' and 'extras' are supported for pypi-dependencies",
                    file=source,
                    line=line,
                    entry=name,
                )
            if spec.get("extras"):
                extras = "[" + ",".join(spec["extras"]) + "]"
            spec = spec.get("version", "*")
        if not isinstance(spec, str):
            raise SpecError("expected a version string", file=source, line=line, entry=name)
        req = f"{name}{extras}" + ("" if spec.strip() in ("", "*") else spec.strip())
        normalize_pip_requirement(req, file=source, line=line)
        pip.append(req)
        lines[req] = line
    return conda, pip, lines


def _toml_line(text: str, key: str, offset: int = 0) -> int | None:
    pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=", re.MULTILINE)
    match = pattern.search(text)
    return text.count("\n", 0, match.start()) + 1 + offset if match else None
