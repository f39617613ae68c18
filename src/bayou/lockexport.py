"""`bayou env export --format pixi.lock`: a lock that builds the same env again.

Every rattler build keeps its lock in ``<prefix>/.bayou/conda-lock.yml``
(pixi.lock format, written by rattler: the conda records with URLs and
hashes; for an env built from a lock, its pip packages too). What a solved
env's lock lacks is the pip part, which uv installed from an index by name:

    record["pip_packages"] (name, version) ── uv pip compile name==version...
        --no-deps --format pylock.toml, for the env's own python and index
        options: every file of each release, with its sha256
    ── the file actually installed: the wheel whose tags its .dist-info/WHEEL
        lists (else the sdist) ──▶ one ``pypi:`` entry per package

so `Env.from_file(exported)` installs the same conda builds and the same pip
files, with no solve and every hash checked. This needs the package index
once, at export time (it reads metadata only; uv's cache usually has it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ProvisionError


def pixi_lock_text(record: dict[str, Any], prefix: Path, uv_cache: Path) -> str:
    """The env's lock in pixi.lock format, with its pip packages."""
    import yaml

    path = prefix / ".bayou" / "conda-lock.yml"
    if not path.is_file():
        raise ValueError(
            "this env has no conda part to export as pixi.lock (a pixi.lock needs "
            "conda's python; export a pip-only env as environment.yml)"
        )
    text = path.read_text()
    pip = record.get("pip_packages") or []
    if record.get("spec", {}).get("kind") == "lock" or not pip:
        return text  # an env built from a lock keeps all of it
    data = yaml.safe_load(text)
    entries = pypi_entries(record, prefix, uv_cache)
    environment = data["environments"]["default"]
    key = next(iter(environment["packages"]))
    environment["packages"][key] += [{"pypi": e["pypi"]} for e in entries]
    data["packages"] += entries
    return yaml.safe_dump(data, sort_keys=False)


def pypi_entries(record: dict[str, Any], prefix: Path, uv_cache: Path) -> list[dict[str, Any]]:
    """A pixi.lock ``pypi:`` entry (URL, sha256) for each pip package the env has."""
    import tempfile

    from .provision.tools import Deadline, run_tool
    from .provision.uv_tool import uv_binary, uv_environ, uv_message
    from .pylock import _load_toml

    with tempfile.TemporaryDirectory(prefix="bayou-export-") as work:
        pins = Path(work) / "requirements.in"
        pins.write_text("".join(f"{p['name']}=={p['version']}\n" for p in record["pip_packages"]))
        out = Path(work) / "pylock.toml"
        argv = [uv_binary(), "pip", "compile", str(pins), "-o", str(out), "--no-deps"]
        argv += ["--no-header", "--no-config", "--python", record["python"], "--quiet"]
        for option in record.get("spec", {}).get("pip_options", []):
            flag, _, value = option.partition(" ")
            argv += ["--prerelease", "allow"] if flag == "--pre" else [flag, value]
        result = run_tool(
            argv,
            deadline=Deadline(600),
            what="looking up the pip packages' files",
            env=uv_environ(uv_cache),
        )
        if result.returncode != 0:
            raise ProvisionError(
                f"could not look up the pip packages' files: {uv_message(result)}",
                output=result.output,
            )
        text = out.read_text()
    locked = {p["name"]: p for p in _load_toml(text, None).get("packages", [])}
    entries = []
    for package in record["pip_packages"]:
        found = locked.get(package["name"])
        if found is None:
            raise ProvisionError(f"uv did not lock {package['name']}", package=package["name"])
        chosen = _installed_file(found, prefix, package)
        entries.append(
            {
                "pypi": chosen["url"],
                "name": package["name"],
                "version": package["version"],
                "sha256": chosen["hashes"]["sha256"],
            }
        )
    return entries


def _installed_file(locked: dict[str, Any], prefix: Path, package: dict[str, str]) -> Any:
    """The wheel the env got (its WHEEL file lists the tags), else the sdist."""
    from packaging.utils import canonicalize_name, parse_wheel_filename

    tags: set[str] = set()
    for wheel_file in prefix.glob("lib/python3*/site-packages/*.dist-info/WHEEL"):
        stem = wheel_file.parent.name[: -len(".dist-info")]
        name, _, version = stem.rpartition("-")
        if canonicalize_name(name) == package["name"] and version == package["version"]:
            tags = {
                line.split(":", 1)[1].strip()
                for line in wheel_file.read_text().splitlines()
                if line.startswith("Tag:")
            }
    for wheel in locked.get("wheels", []):
        _n, _v, _b, wheel_tags = parse_wheel_filename(wheel["url"].rsplit("/", 1)[-1])
        if {str(t) for t in wheel_tags} & tags:
            return wheel
    if locked.get("sdist"):
        return locked["sdist"]
    raise ProvisionError(
        f"no file of {package['name']} {package['version']} matches what the env has",
        package=package["name"],
    )
