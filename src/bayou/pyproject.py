"""``pyproject.toml`` and scripts with PEP 723 inline metadata as env specs.

Both describe what a piece of Python code needs in the same words, so they
share one reader:

    pyproject.toml: [project] requires-python, dependencies
    script.py:      # /// script  ...  # ///  (requires-python, dependencies)
        │ plus, in either, [tool.bayou] (conda, channels, env-vars) and
        │ [tool.pixi] (dependencies: conda, pypi-dependencies, workspace channels)
        ▼
    EnvArgs(python, conda, pip, channels) ──▶ Env.from_file / Env.from_script

`requires-python` is a range, an `Env` needs one Python: the caller's X.Y
when the range allows it (functions then travel by value), else for a conda
env the range itself as the spec for conda's python (the solver picks the
newest), else for a pip env the newest interpreter on this machine in the
range. A pyproject's own project (pixi's ``{ path = "." }``) is not
installed: bayou installs what the code needs, the code itself travels with
the functions. Every `SpecError` names the file, the line in it (in the
script, not in the block) and the entry.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from .errors import SpecError
from .pixitoml import load_toml, pixi_dependencies
from .pylock import allows, choose_python
from .spec_entries import (
    DEFAULT_CHANNELS,
    EnvArgs,
    conda_spec_name,
    normalize_conda_spec,
    normalize_pip_requirement,
)

# The reference regular expression of PEP 723.
_BLOCK = re.compile(r"(?m)^# /// (?P<type>[a-zA-Z0-9-]+)$\s(?P<content>(^#(| .*)$\s)+)^# ///$")
_BAYOU_KEYS = ("conda", "channels", "env-vars")
_SCRIPT_KEYS = ("requires-python", "dependencies", "tool")


def script_metadata(text: str, source: str) -> tuple[str, int] | None:
    """(the TOML of the script block, the line before its first line), or None."""
    blocks = [m for m in _BLOCK.finditer(text) if m.group("type") == "script"]
    if len(blocks) > 1:
        raise SpecError(
            "more than one '# /// script' block (PEP 723 allows one)",
            file=source,
            line=text.count("\n", 0, blocks[1].start()) + 1,
        )
    if not blocks:
        return None
    block = blocks[0]
    toml = "".join(
        line[2:] if line.startswith("# ") else line[1:]
        for line in block.group("content").splitlines(keepends=True)
    )
    return toml, text.count("\n", 0, block.start()) + 1


def read_script(path: Path) -> EnvArgs:
    source = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror}", file=source)
    found = script_metadata(text, source)
    if found is None:
        raise SpecError(
            "no PEP 723 metadata in this script (a '# /// script' ... '# ///' block)",
            file=source,
        )
    toml, offset = found
    data = load_toml(toml, source, offset)
    for key in data:
        if key not in _SCRIPT_KEYS:
            raise SpecError(
                f"unknown key in the script block (expected {', '.join(_SCRIPT_KEYS)})",
                file=source,
                line=_key_line(toml, key, offset),
                entry=key,
            )
    return _env_args(
        source,
        toml,
        offset,
        requires_python=data.get("requires-python"),
        dependencies=data.get("dependencies", []),
        tool=data.get("tool", {}),
        name=path.stem,
    )


def read_pyproject(path: Path) -> EnvArgs:
    source = str(path)
    text = path.read_text()
    data = load_toml(text, source)
    project = data.get("project", {})
    if "dependencies" in project.get("dynamic", []):
        raise SpecError(
            "the project's dependencies are dynamic (computed by its build backend): "
            "bayou reads only static [project] dependencies",
            file=source,
            line=_key_line(text, "dynamic", 0),
            entry="dependencies",
        )
    tool = data.get("tool", {})
    if not project and not tool.get("pixi") and not tool.get("bayou"):
        raise SpecError(
            "no [project], [tool.pixi] or [tool.bayou] table to read an env from",
            file=source,
        )
    return _env_args(
        source,
        text,
        0,
        requires_python=project.get("requires-python"),
        dependencies=project.get("dependencies", []),
        tool=tool,
        name=project.get("name"),
    )


def _env_args(
    source: str,
    text: str,
    offset: int,
    *,
    requires_python: Any,
    dependencies: Any,
    tool: Any,
    name: str | None,
) -> EnvArgs:
    if not isinstance(dependencies, list) or not all(isinstance(d, str) for d in dependencies):
        raise SpecError(
            "dependencies must be a list of requirement strings",
            file=source,
            line=_key_line(text, "dependencies", offset),
        )
    lines: dict[str, int | None] = {}
    pip: list[str] = []
    for dep in dependencies:
        line = _value_line(text, dep, offset)
        normalize_pip_requirement(dep, file=source, line=line)
        pip.append(dep)
        lines[dep] = line
    conda: list[str] = []
    channels: list[str] = []
    env_vars: dict[str, str] = {}
    bayou = tool.get("bayou") or {}
    for key in bayou:
        if key not in _BAYOU_KEYS:
            raise SpecError(
                f"unknown key in [tool.bayou] (expected {', '.join(_BAYOU_KEYS)})",
                file=source,
                line=_key_line(text, key, offset),
                entry=key,
            )
    for spec in _strings(bayou.get("conda", []), "conda", source, text, offset):
        line = _value_line(text, spec, offset)
        normalize_conda_spec(spec, file=source, line=line)
        conda.append(spec)
        lines[spec] = line
    channels += _strings(bayou.get("channels", []), "channels", source, text, offset)
    env_vars.update(bayou.get("env-vars", {}))
    pixi = tool.get("pixi") or {}
    if pixi:
        meta = pixi.get("workspace") or pixi.get("project") or {}
        channels += [c for c in meta.get("channels", []) if c not in channels]
        more_conda, more_pip, more_lines = pixi_dependencies(
            pixi, text, source, offset, skip_local=True
        )
        conda += more_conda
        pip += more_pip
        lines.update(more_lines)
        env_vars.update(pixi.get("activation", {}).get("env", {}))
    python = None
    if requires_python is not None:
        python, conda_python = _python_for(
            requires_python, bool(conda), source, _key_line(text, "requires-python", offset)
        )
        if conda_python and not any(conda_spec_name(c) == "python" for c in conda):
            conda.append(conda_python)
        if any(conda_spec_name(c) == "python" for c in conda):
            python = None  # the conda spec for python says it
    return EnvArgs(
        python=python,
        conda=conda,
        pip=pip,
        channels=channels or DEFAULT_CHANNELS,
        env_vars=env_vars,
        name=name,
        source=source,
        lines=lines,
    )


def _python_for(
    requires_python: Any, conda: bool, source: str, line: int | None
) -> tuple[str | None, str | None]:
    """(python=, or a conda spec for python) for a requires-python range."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        requires = SpecifierSet(str(requires_python))
    except InvalidSpecifier:
        raise SpecError(
            "requires-python is not a version specifier",
            file=source,
            line=line,
            entry=str(requires_python),
        )
    caller = f"{sys.version_info.major}.{sys.version_info.minor}"
    if allows(requires, caller):
        return caller, None
    if conda:
        return None, "python " + ",".join(sorted(str(s) for s in requires))
    return choose_python(requires, source, line), None


def _strings(value: Any, key: str, source: str, text: str, offset: int) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SpecError(
            f"'{key}' must be a list of strings",
            file=source,
            line=_key_line(text, key, offset),
            entry=key,
        )
    return value


def _key_line(text: str, key: str, offset: int) -> int | None:
    match = re.search(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=", text, re.MULTILINE)
    return text.count("\n", 0, match.start()) + 1 + offset if match else None


def _value_line(text: str, value: str, offset: int) -> int | None:
    for quote in ('"', "'"):
        at = text.find(f"{quote}{value}{quote}")
        if at >= 0:
            return text.count("\n", 0, at) + 1 + offset
    return None
