"""Reading environment files into what an `Env` is made of.

Formats, dispatched on the file name:

* ``environment.yml`` / ``*.yml`` / ``*.yaml``: conda's format (``name``,
  ``channels``, ``dependencies`` with a ``pip:`` sub-list, ``variables``). It
  is read with PyYAML's node API so every entry keeps its line number.
* ``requirements*.txt`` / ``*.txt``: pip's format, with comments, line
  continuations, ``-r`` includes (relative to the including file) and the
  index options ``--index-url``, ``--extra-index-url``, ``--find-links``.
* ``pixi.toml``: see `bayou.pixitoml`.
* ``pyproject.toml`` and ``*.py`` scripts with PEP 723 metadata: see
  `bayou.pyproject`.
* Locks, installed exactly as locked: ``pixi.lock``, ``conda-lock.yml`` and
  PEP 751 ``pylock.toml`` (see `bayou.lock_formats`).

Every entry is validated where it is read, so a `SpecError` names the file,
the line and the entry at fault. What comes out is the arguments of
`Env(...)` (`EnvArgs`) or, for a lock, its `LockedSpec`: `Env.from_file`
makes the `Env`, so no reader needs `bayou.env`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .errors import SpecError
from .lock_formats import LOCK_KINDS, read_lock_file
from .lockfiles import LockedSpec
from .pixitoml import load_toml as load_toml  # importable from specfiles too, as before
from .pixitoml import pixi_dependencies as pixi_dependencies
from .pixitoml import read_pixi_toml
from .pyproject import read_pyproject, read_script
from .spec_entries import (
    DEFAULT_CHANNELS,
    EnvArgs,
    normalize_conda_spec,
    normalize_pip_requirement,
)


def read_spec_file(
    path: Path, *, environment: str | None = None, python: str | None = None
) -> EnvArgs | LockedSpec:
    if not path.is_file():
        raise SpecError("no such file", file=str(path))
    name = path.name.lower()
    kind = spec_file_kind(name)
    if environment is not None and kind != "pixi.lock":
        raise SpecError("environment= picks an environment of a pixi.lock", file=str(path))
    if python is not None and kind != "pylock.toml":
        raise SpecError(
            "python= applies to a pylock.toml (use Env.replace(python=...) otherwise)",
            file=str(path),
        )
    if kind in LOCK_KINDS:
        return read_lock_file(path, kind, environment, python)
    if kind == "pyproject.toml":
        return read_pyproject(path)
    if kind == "script":
        return read_script(path)
    if name.endswith((".yml", ".yaml")):
        return read_environment_yml(path)
    if name.endswith(".toml"):
        if (
            name != "pixi.toml"
            and "[pypi-dependencies]" not in path.read_text()
            and ("[dependencies]" not in path.read_text())
        ):
            raise SpecError("only pixi.toml manifests are supported", file=str(path))
        return read_pixi_toml(path)
    if name.endswith((".txt", ".in")):
        return read_requirements_txt(path)
    raise SpecError(
        "unknown file type (expected environment.yml, requirements.txt, pixi.toml, "
        "pyproject.toml, a .py script, pixi.lock, conda-lock.yml or pylock.toml)",
        file=str(path),
    )


def spec_file_kind(name: str) -> str | None:
    """Which reader a file name calls for, when it is not told by the suffix alone."""
    name = name.lower()
    if name.endswith(".lock"):  # pixi.lock, or an exported one named otherwise
        return "pixi.lock"
    if re.search(r"conda-lock\.ya?ml$", name):
        return "conda-lock.yml"
    if re.fullmatch(r"pylock(\.[^.]+)?\.toml", name):
        return "pylock.toml"
    if name == "pyproject.toml":
        return "pyproject.toml"
    if name.endswith(".py"):
        return "script"
    return None


# -- requirements.txt ---------------------------------------------------------


def parse_requirements(path: Path, _seen: tuple[Path, ...] = ()) -> tuple[list[str], list[str]]:
    """(requirements, pip options) of a requirements file, includes resolved."""
    if path.resolve() in _seen:
        raise SpecError("requirements files include each other", file=str(path))
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror}", file=str(path))
    reqs: list[str] = []
    options: list[str] = []
    for lineno, line in _logical_lines(text):
        if line.startswith(("-r", "--requirement")):
            target = re.sub(r"^(-r|--requirement)[ =]?", "", line).strip()
            if not target:
                raise SpecError("-r needs a file name", file=str(path), line=lineno, entry=line)
            include = path.parent / target
            if not include.is_file():
                raise SpecError(
                    "included requirements file not found", file=str(path), line=lineno, entry=line
                )
            more_reqs, more_options = parse_requirements(include, (*_seen, path.resolve()))
            reqs += more_reqs
            options += more_options
        elif line.startswith(("--index-url", "-i ", "--extra-index-url", "--find-links", "-f ")):
            flag, _, value = line.replace("=", " ", 1).partition(" ")
            flag = {"-i": "--index-url", "-f": "--find-links"}.get(flag, flag)
            options.append(f"{flag} {value.strip()}")
        elif line == "--pre":
            options.append("--pre")
        elif line.startswith("-"):
            raise SpecError(
                "unsupported option in a requirements file",
                file=str(path),
                line=lineno,
                entry=line,
            )
        else:
            normalize_pip_requirement(line, file=str(path), line=lineno)
            reqs.append(line)
    return reqs, options


def _logical_lines(text: str):
    """(first line number, text) per logical line: comments gone, `\\` joined."""
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = re.sub(r"(^|\s+)#.*$", "", raw).rstrip()
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            yield start, full
    if pending.strip():
        yield start, pending.strip()


def read_requirements_txt(path: Path) -> EnvArgs:
    reqs, options = parse_requirements(path)
    return EnvArgs(pip=reqs, pip_options=options, name=path.parent.name or None, source=str(path))


# -- environment.yml ----------------------------------------------------------


def read_environment_yml(path: Path) -> EnvArgs:
    import yaml

    source = str(path)
    try:
        root = yaml.compose(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise SpecError(
            f"invalid YAML: {getattr(exc, 'problem', exc)}",
            file=source,
            line=mark.line + 1 if mark else None,
        )
    if root is None:
        raise SpecError("the file is empty", file=source)
    if not isinstance(root, yaml.MappingNode):
        raise SpecError("expected a mapping at the top level", file=source, line=1)

    name = None
    channels: list[str] = []
    conda: list[str] = []
    pip: list[str] = []
    pip_options: list[str] = []
    env_vars: dict[str, str] = {}
    lines: dict[str, int] = {}
    for key_node, value in root.value:
        key, line = key_node.value, key_node.start_mark.line + 1
        if key == "name":
            name = _scalar(value, source)
        elif key == "channels":
            channels = [_scalar(item, source) for item in _sequence(value, source, key)]
        elif key == "dependencies":
            for item in _sequence(value, source, key):
                if isinstance(item, yaml.MappingNode):
                    for sub_key, sub_value in item.value:
                        if sub_key.value != "pip":
                            raise SpecError(
                                "only a 'pip:' list may be nested in dependencies",
                                file=source,
                                line=sub_key.start_mark.line + 1,
                                entry=sub_key.value,
                            )
                        for req_node in _sequence(sub_value, source, "pip"):
                            req = _scalar(req_node, source)
                            req_line = req_node.start_mark.line + 1
                            if req.startswith(("-r", "--requirement")):
                                target = re.sub(r"^(-r|--requirement)[ =]?", "", req).strip()
                                more, opts = parse_requirements(path.parent / target)
                                pip += more
                                pip_options += opts
                            elif req.startswith("-"):
                                flag, _, val = req.replace("=", " ", 1).partition(" ")
                                pip_options.append(f"{flag} {val.strip()}".strip())
                            else:
                                normalize_pip_requirement(req, file=source, line=req_line)
                                pip.append(req)
                                lines[req] = req_line
                else:
                    spec = _scalar(item, source)
                    spec_line = item.start_mark.line + 1
                    normalize_conda_spec(spec, file=source, line=spec_line)
                    if spec.strip().lower() == "pip" or spec.strip().lower().startswith("pip "):
                        lines[spec] = spec_line
                    conda.append(spec)
                    lines[spec] = spec_line
        elif key == "variables":
            if not isinstance(value, yaml.MappingNode):
                raise SpecError("'variables' must be a mapping", file=source, line=line)
            env_vars = {k.value: _scalar(v, source) for k, v in value.value}
        elif key == "prefix":
            continue  # where conda would put it; bayou decides that itself
        else:
            raise SpecError(
                "unknown key (expected name, channels, dependencies, variables)",
                file=source,
                line=line,
                entry=key,
            )
    # conda's `pip` package is what conda needs to run pip; uv does that job.
    conda = [c for c in conda if not re.match(r"^pip(\s|=|$|<|>)", c.strip().lower())]
    return EnvArgs(
        conda=conda,
        pip=pip,
        channels=channels or DEFAULT_CHANNELS,
        env_vars=env_vars,
        name=name,
        pip_options=pip_options,
        source=source,
        lines=lines,
    )


def _scalar(node: Any, source: str) -> str:
    import yaml

    if not isinstance(node, yaml.ScalarNode):
        raise SpecError("expected a single value", file=source, line=node.start_mark.line + 1)
    return str(node.value)


def _sequence(node: Any, source: str, key: str) -> list[Any]:
    import yaml

    if not isinstance(node, yaml.SequenceNode):
        raise SpecError(
            f"'{key}' must be a list", file=source, line=node.start_mark.line + 1, entry=key
        )
    return node.value
