"""The ``bayou`` command line: manage the store's environments, run commands.

    bayou env create FILE | --python X.Y --conda SPEC... --pip REQ...
    bayou env list | show REF | export REF | remove REF... | gc
    bayou env pack REF -o FILE | unpack FILE|URL   bundles (docs/bundles.md)
    bayou run REF -- CMD [ARGS...]
    bayou doctor
    bayou workers list | stop NAME...      persistent pools (docs/persistent.md)
    bayou debug [NAME] [-o FILE]           VS Code attach config (docs/debugging.md)
    bayou logs [NAME] [-n N] [--worker PID] [-f] (docs/logs.md)

REF is a hash (or a unique prefix of one), an env name, a spec file, or the
prefix/python of an existing env; envs are looked up in the store, then in the
shared stores of $BAYOU_STORE_PATH (`list`, `show`, `export`, `run`; `remove`
and `gc` only ever change the store itself). Exit codes: 0 success, 1 a build or command
failed, 2 bad usage or a bad spec, 3 an env was not found; `run` exits with
the command's own code.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from datetime import datetime
from pathlib import Path

from . import doctor
from .env import Env
from .errors import EnvInUseError, ProvisionError, SpecError
from .provision import environment_from_record, provision
from .provision.tools import offline_requested
from .run import run as run_in_env
from .store import SharedStoreError, Store, StoredEnv, pick

EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND = 1, 2, 3


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    _show_build_progress()
    try:
        return args.func(args) or 0
    except CliError as exc:
        print(f"bayou: {exc}", file=sys.stderr)
        return exc.code
    except SpecError as exc:
        print(f"bayou: invalid environment: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ProvisionError, SharedStoreError) as exc:
        print(f"bayou: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("bayou: interrupted", file=sys.stderr)
        return 130


def _show_build_progress() -> None:
    """Without a terminal (CI, a pipe) builds report on the `bayou.provision` logger:
    the command line shows those lines on stderr, unless logging is set up already."""
    if sys.stderr.isatty() or logging.getLogger().handlers:
        return
    provision_log = logging.getLogger("bayou.provision")
    if provision_log.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    provision_log.addHandler(handler)
    provision_log.setLevel(logging.INFO)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bayou", description="Run Python code in isolated conda/pip environments."
    )
    parser.add_argument("--version", action="version", version=f"bayou {doctor.version()}")
    parser.add_argument("--store", help="store root (default: $BAYOU_HOME or the user cache)")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    env_cmd = commands.add_parser("env", help="create, inspect and remove environments")
    env_sub = env_cmd.add_subparsers(title="env commands", metavar="ACTION")
    # print the help, then return EXIT_USAGE (mypy frowns on a None in the tuple)
    env_cmd.set_defaults(func=lambda a: (env_cmd.print_help(), EXIT_USAGE)[1])  # type: ignore[func-returns-value]

    create = env_sub.add_parser("create", help="build an environment (or find it built)")
    create.add_argument(
        "file",
        nargs="?",
        help="environment.yml, requirements.txt, pixi.toml, pyproject.toml, a script with "
        "PEP 723 metadata, or a lock: pixi.lock, conda-lock.yml, pylock.toml",
    )
    create.add_argument("--environment", "-e", help="the environment of a pixi.lock to build")
    create.add_argument("--python", help="Python version, e.g. 3.12")
    create.add_argument("--conda", nargs="+", default=[], metavar="SPEC", help="conda specs")
    create.add_argument("--pip", nargs="+", default=[], metavar="REQ", help="pip requirements")
    create.add_argument("--channel", "-c", action="append", default=None, help="conda channel")
    create.add_argument("--name", help="a label shown by `env list`")
    create.add_argument("--timeout", type=float, help="give up after this many seconds")
    create.add_argument(
        "--backend",
        choices=["rattler", "micromamba", "pixi", "conda"],
        help="the tool that builds the conda part (default: $BAYOU_BACKEND or rattler)",
    )
    create.add_argument(
        "--offline",
        action="store_true",
        default=None,
        help="no network access: build from the package caches only (also $BAYOU_OFFLINE=1)",
    )
    create.add_argument(
        "--allow-download",
        action="store_true",
        default=None,
        help="let bayou fetch a missing micromamba/pixi (checksum verified) into the store",
    )
    create.set_defaults(func=cmd_create)

    listing = env_sub.add_parser("list", help="list built environments")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=cmd_list)

    show = env_sub.add_parser("show", help="show one environment's record")
    show.add_argument("ref", help="hash, hash prefix or name")
    show.set_defaults(func=cmd_show)

    export = env_sub.add_parser("export", help="write an exact, rebuildable spec")
    export.add_argument("ref", help="hash, hash prefix or name")
    export.add_argument("-o", "--output", help="file to write (default: stdout)")
    export.add_argument(
        "--format",
        choices=["environment.yml", "pixi.lock"],
        default="environment.yml",
        help="environment.yml with exact pins (default), or a pixi.lock that rebuilds the env",
    )
    export.set_defaults(func=cmd_export)

    remove = env_sub.add_parser("remove", help="delete environments")
    remove.add_argument("refs", nargs="+", metavar="ref")
    remove.add_argument(
        "--force", action="store_true", help="remove even an env a running executor uses"
    )
    remove.set_defaults(func=cmd_remove)

    gc = env_sub.add_parser("gc", help="evict least recently used environments")
    gc.add_argument("--max-age", help="evict envs unused for longer, e.g. 30d, 12h")
    gc.add_argument("--max-size", help="then evict LRU envs until they fit, e.g. 20G")
    gc.add_argument("--dry-run", action="store_true", help="only say what would go")
    gc.set_defaults(func=cmd_gc)

    from .bundle_cli import add_parsers as add_bundle_parsers  # env pack, env unpack

    add_bundle_parsers(env_sub, _find)

    run = commands.add_parser("run", help="run a command inside an environment")
    run.add_argument("ref", help="hash, name, spec file, or existing prefix")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    run.set_defaults(func=cmd_run)

    doctor_command = commands.add_parser("doctor", help="what bayou finds on this machine")
    doctor_command.set_defaults(func=cmd_doctor)

    from .persistent import commands as runtime_commands  # workers, debug, logs

    runtime_commands.add_parsers(commands)
    return parser


def _store(args: argparse.Namespace) -> Store:
    return Store(args.store) if args.store else Store()


def _all_envs(store: Store) -> list[StoredEnv]:
    """The store's envs, then each shared store's (an env the store has is not repeated)."""
    envs = store.list()
    seen = {e.hash for e in envs}
    for shared in store.shared_stores():
        more = [e for e in shared.list() if e.hash not in seen]
        seen.update(e.hash for e in more)
        envs += more
    return envs


def _find(store: Store, ref: str) -> StoredEnv:
    """`ref` in the store or, after it, in a shared store."""
    where = " or ".join(str(s.envs_dir) for s in [store, *store.shared_stores()])
    try:
        return pick(_all_envs(store), ref, where)
    except KeyError as exc:
        raise CliError(exc.args[0], EXIT_NOT_FOUND)


def _find_removable(store: Store, ref: str) -> StoredEnv:
    """`ref` in the store itself; one that only a shared store has is refused, named."""
    try:
        return store.resolve(ref)
    except KeyError:
        try:
            found = _find(store, ref)
        except CliError:
            found = None
        if found is None or not found.shared:
            raise
    raise SharedStoreError(
        f"environment {found.hash} lives in the shared store {found.store_root} "
        "($BAYOU_STORE_PATH), which bayou never modifies; its administrator can remove "
        f"it there (BAYOU_HOME={found.store_root} bayou env remove {found.hash[:12]})"
    )


# -- env ------------------------------------------------------------------------


def cmd_create(args: argparse.Namespace) -> int:
    if args.file and (args.conda or args.pip or args.python):
        raise CliError("give a FILE or --python/--conda/--pip, not both", EXIT_USAGE)
    if args.file:
        env = Env.from_file(args.file, environment=args.environment)
    elif args.conda or args.pip or args.python:
        env = Env(
            python=args.python,
            conda=args.conda,
            pip=args.pip,
            channels=args.channel or ("conda-forge",),
            name=args.name,
        )
    else:
        raise CliError("nothing to create: give a FILE or --conda/--pip", EXIT_USAGE)
    if args.file and args.name:
        env = env.replace(name=args.name)
    if args.backend:
        env = env.replace(backend=args.backend)
    store = _store(args)
    try:
        offline = offline_requested(args.offline)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE)
    started = time.monotonic()
    environment = provision(
        env,
        timeout=args.timeout,
        store=store,
        allow_download=args.allow_download,
        offline=offline,
    )
    took = time.monotonic() - started
    print(
        f"{environment.hash}  {environment.prefix}  (python {environment.python_version}, "
        f"{took:.1f} s)"
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    store = _store(args)
    envs = _all_envs(store)
    if args.json:
        rows = [
            {
                "hash": e.hash,
                "name": e.record.get("name"),
                "python": e.record.get("python_version"),
                "size": e.size,
                "last_used": e.last_used,
                "prefix": str(e.prefix),
                "store": str(e.store_root),
                "shared": e.shared,
            }
            for e in envs
        ]
        print(json.dumps(rows, indent=1))
        return 0
    if not envs:
        print("no environments (create one with `bayou env create`)")
        return 0
    print(f"{'HASH':<12}  {'NAME':<20}  {'PYTHON':<8}  {'SIZE':>8}  {'LAST USED':<16}  STORE")
    for e in envs:
        name = e.record.get("name") or Env.from_dict(e.record["spec"]).describe()
        where = f"shared: {e.store_root}" if e.shared else str(e.store_root)
        print(
            f"{e.hash[:12]:<12}  {name[:20]:<20}  {e.record.get('python_version', '?'):<8}  "
            f"{doctor.human_size(e.size):>8}  {datetime.fromtimestamp(e.last_used):%Y-%m-%d %H:%M}  "
            f"{where}"
        )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    found = _find(_store(args), args.ref)
    print(json.dumps(found.record, indent=1, sort_keys=True))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    found = _find(_store(args), args.ref)
    record = found.record
    if args.format == "pixi.lock":
        from .lockexport import pixi_lock_text  # the conda lock, plus the pip part

        try:
            text = pixi_lock_text(record, found.prefix, _store(args).uv_cache)
        except ValueError as exc:
            raise CliError(str(exc), EXIT_FAILED)
    else:
        text = exact_environment_yml(record)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def exact_environment_yml(record: dict) -> str:
    """An environment.yml pinning every package exactly as it was installed."""
    spec = record["spec"]
    lines = [f"name: {record.get('name') or record['hash']}"]
    conda = record.get("conda_packages") or []
    if conda:
        channels = spec.get("channels") or []
        lines += ["channels:"] + [f"  - {c}" for c in channels]
    lines.append("dependencies:")
    if conda:
        lines += [f"  - {p['name']}={p['version']}={p['build']}" for p in conda]
    else:
        lines.append(f"  - python={record['python_version']}")
    if spec.get("pip"):
        lines.append("  - pip:")
        lines += [f"    - {o}" for o in spec.get("pip_options", [])]
        lines += [f"    - {p['name']}=={p['version']}" for p in record.get("pip_packages", [])]
    if spec.get("env_vars"):
        lines.append("variables:")
        lines += [f"  {k}: {json.dumps(v)}" for k, v in sorted(spec["env_vars"].items())]
    return "\n".join(lines) + "\n"


def cmd_remove(args: argparse.Namespace) -> int:
    store = _store(args)
    code = 0
    for ref in args.refs:
        try:
            found = _find_removable(store, ref)
        except KeyError as exc:
            print(f"bayou: {exc.args[0]}", file=sys.stderr)
            code = EXIT_NOT_FOUND
            continue
        except SharedStoreError as exc:
            print(f"bayou: {exc}", file=sys.stderr)
            code = EXIT_FAILED
            continue
        try:
            store.remove(found.hash, force=args.force)
        except EnvInUseError as exc:
            print(f"bayou: {exc}", file=sys.stderr)
            code = EXIT_FAILED
            continue
        print(f"removed {found.hash}")
    return code


def cmd_gc(args: argparse.Namespace) -> int:
    if not args.max_age and not args.max_size:
        raise CliError("give --max-age and/or --max-size", EXIT_USAGE)
    max_age = _parse_duration(args.max_age) if args.max_age else None
    max_size = _parse_size(args.max_size) if args.max_size else None
    evicted = _store(args).gc(max_age=max_age, max_size=max_size, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for env in evicted:
        print(f"{verb} {env.hash}  {doctor.human_size(env.size)}")
    freed = sum(e.size for e in evicted)
    print(f"{verb} {len(evicted)} environment(s), {doctor.human_size(freed)}")
    return 0


# -- run / doctor -------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CliError("no command given: bayou run ENV -- CMD [ARGS...]", EXIT_USAGE)
    target = _run_target(_store(args), args.ref)
    try:
        result = run_in_env(target, command, capture=False)
    except FileNotFoundError as exc:
        raise CliError(str(exc), 127)
    return result.returncode


def _run_target(store: Store, ref: str):
    path = Path(ref).expanduser()
    if path.is_file() and path.suffix in (".yml", ".yaml", ".txt", ".toml", ".lock", ".py"):
        return Env.from_file(path)
    if path.exists() and (path.is_dir() or os.access(path, os.X_OK)):
        return Env.existing(path)
    found = _find(store, ref)
    return environment_from_record(found.record)


def cmd_doctor(args: argparse.Namespace) -> int:
    return doctor.report(_store(args))


# -- helpers ------------------------------------------------------------------------


def _parse_duration(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw]?)", text.strip())
    if not match:
        raise CliError(f"not a duration: {text!r} (e.g. 30d, 12h, 90m)", EXIT_USAGE)
    factor = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
    return float(match.group(1)) * factor


def _parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?", text.strip(), re.IGNORECASE)
    if not match:
        raise CliError(f"not a size: {text!r} (e.g. 500M, 20G)", EXIT_USAGE)
    factor = 1024 ** " KMGT".index(match.group(2).upper() or " ")
    return int(float(match.group(1)) * factor)


if __name__ == "__main__":
    sys.exit(main())
