"""The entries of an env spec, each checked and spelled one canonical way.

Every road into an `Env` passes through here: the constructor, and every
reader of a file (`specfiles`, `pixitoml`, `pyproject`, the lock readers),
which checks each entry where it reads it so that a `SpecError` names the
file, the line and the entry:

    an entry as written ── validate ──▶ SpecError(file, line, entry)
        │ normalise (lower-case conda names, canonical pip names, sorted
        ▼ extras and specifiers, no blanks around operators)
    canonical text ──▶ `canonical_spec` ──▶ the fields `Env.hash` is computed from

A reader hands `Env.from_file` an `EnvArgs` (the constructor's arguments,
every entry already checked) rather than an `Env`: this module sits below
`env` and the readers alike, so the data flows file → reader → `Env` and no
reader imports `env` back.
"""

from __future__ import annotations

import platform as _platform
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from .errors import SpecError

DEFAULT_CHANNELS = ("conda-forge",)
# Tools that can build the conda part (see bayou.provision.external).
BACKENDS = ("rattler", "micromamba", "pixi", "conda")

# A conda match spec as users write it: optional `channel::`, a package name,
# then an optional version/build part (`=1.2`, `>=1,<2`, ` 1.2.* py_0`, `[build=...]`).
_CONDA_NAME = re.compile(
    r"^(?:(?P<channel>[A-Za-z0-9_.\-:/]+)::)?(?P<name>[A-Za-z0-9_][A-Za-z0-9_.\-]*)"
)
_CONDA_REST = re.compile(r"^[A-Za-z0-9_.*<>=!,|~+\-\[\]'\" ]*$")
_PYTHON_VERSION = re.compile(r"^(3)\.(\d{1,2})(?:\.(\d{1,3}))?$")
_PYTHON_CONDA_SIMPLE = re.compile(r"^(?:=?=?|\s*)(3\.\d{1,2}(?:\.\d{1,3})?)(?:\.\*)?$")
_ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PIP_OPTIONS = ("--index-url", "--extra-index-url", "--find-links", "--pre")


@dataclass(frozen=True)
class EnvArgs:
    """What a spec file asks for: the arguments of `Env(...)`, every entry
    checked where it was read; `lines` maps an entry to its line in `source`."""

    conda: list[str] = field(default_factory=list)
    pip: list[str] = field(default_factory=list)
    python: str | None = None
    channels: Iterable[str] = DEFAULT_CHANNELS
    env_vars: Mapping[str, str] | None = None
    name: str | None = None
    pip_options: list[str] = field(default_factory=list)
    source: str | None = None
    lines: Mapping[str, int | None] | None = None


@dataclass(frozen=True)
class CanonicalSpec:
    """A spec env's content, canonical: equal specs, however written, are equal."""

    python: str | None
    conda: tuple[str, ...]
    pip: tuple[str, ...]
    pip_options: tuple[str, ...]
    channels: tuple[str, ...]
    env_vars: MappingProxyType[str, str]


def canonical_spec(
    python: str | None,
    conda: Iterable[str],
    pip: Iterable[str],
    channels: Iterable[str],
    env_vars: Mapping[str, str] | None,
    pip_options: Iterable[str],
    backend: str | None,
    source: str | None,
    lines: Mapping[str, int | None],
) -> CanonicalSpec:
    """Check every argument of `Env(...)` and spell it canonically."""
    if isinstance(conda, str) or isinstance(pip, str):
        raise SpecError("conda= and pip= take a list of specs, not a single string")
    conda_specs: list[str] = []
    python_from_conda: str | None = None
    for raw in conda:
        spec = normalize_conda_spec(raw, file=source, line=lines.get(str(raw)))
        if conda_spec_name(spec) == "python":
            python_from_conda = python_from_conda_spec(spec)
        conda_specs.append(spec)
    if python is not None:
        python = normalize_python(python, file=source)
        if python_from_conda and python_from_conda != python:
            raise SpecError(
                f"python={python!r} contradicts the conda spec for python",
                file=source,
                entry=next(s for s in conda_specs if conda_spec_name(s) == "python"),
            )
    python = python or python_from_conda
    if conda_specs and not any(conda_spec_name(s) == "python" for s in conda_specs):
        # Every bayou env runs Python workers: a conda env always gets one. The
        # version is recorded as if asked for, so to_dict/from_dict round-trips.
        python = python or caller_python_version()
        conda_specs.append(f"python {python}.*")
    pip_reqs = [normalize_pip_requirement(r, file=source, line=lines.get(str(r))) for r in pip]
    options = [normalize_pip_option(o, source) for o in pip_options]
    chans = [normalize_channel(c, source) for c in channels]
    if conda_specs and not chans:
        raise SpecError("a conda environment needs at least one channel", file=source)
    variables = valid_env_vars(env_vars, source)
    if backend is not None and backend not in BACKENDS:
        raise SpecError(
            f"backend must be one of {', '.join(BACKENDS)} (or None: py-rattler, "
            "unless $BAYOU_BACKEND says otherwise)",
            file=source,
            entry=str(backend),
        )
    return CanonicalSpec(
        python=python or (None if conda_specs else caller_python_version()),
        conda=tuple(sorted(set(conda_specs))),
        pip=tuple(sorted(set(pip_reqs))),
        pip_options=tuple(options),
        channels=tuple(dict.fromkeys(chans)) if conda_specs else (),
        env_vars=MappingProxyType(variables),
    )


def conda_platform() -> str:
    """The conda subdir of this machine, e.g. `linux-64` or `osx-arm64`."""
    system = {"Linux": "linux", "Darwin": "osx", "Windows": "win"}.get(
        _platform.system(), _platform.system().lower()
    )
    machine = _platform.machine().lower()
    arch = {
        "x86_64": "64",
        "amd64": "64",
        "aarch64": "aarch64",
        "arm64": "arm64",
        "ppc64le": "ppc64le",
    }.get(machine, machine)
    if system == "linux" and arch == "arm64":
        arch = "aarch64"
    if system == "osx" and arch == "aarch64":
        arch = "arm64"
    return f"{system}-{arch}"


def caller_python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def normalize_python(value: str, *, file: str | None = None, line: int | None = None) -> str:
    text = str(value).strip()
    if not _PYTHON_VERSION.match(text):
        raise SpecError(
            "python must be a version like '3.12' or '3.12.1'", file=file, line=line, entry=text
        )
    return text


def normalize_conda_spec(spec: str, *, file: str | None = None, line: int | None = None) -> str:
    """Validate a conda match spec and return its canonical text."""
    text = str(spec).strip()
    match = _CONDA_NAME.match(text)
    rest = text[match.end() :] if match else ""
    if not text or not match or not _CONDA_REST.match(rest):
        raise SpecError("not a valid conda package spec", file=file, line=line, entry=text)
    channel = match.group("channel")
    name = match.group("name").lower()
    rest = re.sub(r"\s+", " ", rest).strip()
    if rest and rest[0] not in "=<>!~[":
        rest = " " + rest  # "numpy 1.2.*": the version is separated by a space
    # Whitespace around operators carries no meaning: `>= 1.2` is `>=1.2`.
    rest = re.sub(r"\s*([=<>!~,|])\s*", r"\1", rest)
    return f"{channel + '::' if channel else ''}{name}{rest}"


def conda_spec_name(spec: str) -> str:
    match = _CONDA_NAME.match(spec)
    assert match, spec
    return match.group("name").lower()


def normalize_pip_requirement(
    req: str, *, file: str | None = None, line: int | None = None
) -> str:
    """Validate a PEP 508 requirement and return its canonical text."""
    text = str(req).strip()
    try:
        parsed = Requirement(text)
    except InvalidRequirement as exc:
        raise SpecError(f"not a valid pip requirement: {exc}", file=file, line=line, entry=text)
    out: str = canonicalize_name(parsed.name)
    if parsed.extras:
        out += "[" + ",".join(sorted(canonicalize_name(e) for e in parsed.extras)) + "]"
    if parsed.url:
        out += f" @ {parsed.url}"
    else:
        out += ",".join(sorted(str(s) for s in parsed.specifier))
    if parsed.marker is not None:
        out += f"; {parsed.marker}"
    return out


def pip_requirement_name(req: str) -> str:
    return canonicalize_name(Requirement(req).name)


def valid_env_vars(env_vars: Mapping[str, str] | None, source: str | None) -> dict[str, str]:
    variables = {}
    for key, value in (env_vars or {}).items():
        if not _ENV_VAR_NAME.match(str(key)):
            raise SpecError("not a valid environment variable name", file=source, entry=key)
        variables[str(key)] = str(value)
    return variables


def python_from_conda_spec(spec: str) -> str | None:
    rest = spec[len("python") :].strip()
    match = _PYTHON_CONDA_SIMPLE.match(rest)
    return match.group(1) if match else None


def normalize_channel(channel: str, source: str | None) -> str:
    text = str(channel).strip().rstrip("/")
    if not text or any(c.isspace() for c in text):
        raise SpecError("not a valid channel", file=source, entry=str(channel))
    if "://" not in text and not text.startswith("/"):
        text = text.lower()
    return text


def normalize_pip_option(option: str, source: str | None) -> str:
    text = " ".join(str(option).split())
    flag = text.split(" ", 1)[0].split("=", 1)[0]
    if flag not in _PIP_OPTIONS:
        raise SpecError(
            f"unsupported pip option (supported: {', '.join(_PIP_OPTIONS)})",
            file=source,
            entry=text,
        )
    return text.replace("=", " ", 1) if "=" in text.split(" ", 1)[0] else text
