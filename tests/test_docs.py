"""Every code block of README.md and docs/*.md runs, as a reader would run it.

The documents stay plain Markdown; a few invisible HTML comments steer the run:

* A ```` ```python ```` block runs as a script in a fresh interpreter. The blocks of one
  document run in order, in one working directory, so a block may use files written by
  earlier ones.
* A block right after ``<!-- file: NAME -->`` is written to NAME in that directory (a
  module, an environment.yml) instead of being run.
* ``<!-- expect: TEXT -->`` right after a block: its standard output contains TEXT.
* A ```` ```sh ```` block runs line by line without a shell (``shlex``); ``bayou`` and
  ``python`` are this installation's. A line with shell operators (``&&``) is one of the
  README's two commands for a fresh machine; those must be exactly what ``.ci/run`` runs,
  which is where they run.
* ```` ```text ```` blocks are output or a synopsis; each ``bayou ...`` line of a synopsis
  is checked against ``bayou <subcommand> --help``.

The run has a private store (``BAYOU_HOME``), the test session's package caches, and
``BAYOU_CHANNEL_ALIAS`` pointing at a mirror of the local test channel, so the
``conda-forge`` the documents name resolves on a machine that can't reach it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
DIRECTIVE = re.compile(r"<!--\s*(file|expect):\s*(.*?)\s*-->")


@dataclasses.dataclass
class Block:
    document: Path
    line: int
    lang: str
    code: str
    file: str | None = None
    expect: list[str] = dataclasses.field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(REPO)}:{self.line}"


def blocks(document: Path) -> list[Block]:
    text = document.read_text()
    found: list[Block] = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        block = Block(document, line, match.group(1), match.group(2))
        before = text[: match.start()].rstrip().rsplit("\n", 1)[-1]
        directive = DIRECTIVE.fullmatch(before.strip())
        if directive and directive.group(1) == "file":
            block.file = directive.group(2)
        after = text[match.end() :].lstrip("\n")
        while directive := DIRECTIVE.match(after):
            if directive.group(1) == "expect":
                block.expect.append(directive.group(2))
            after = after[directive.end() :].lstrip("\n")
        found.append(block)
    return found


def ci_lines() -> list[str]:
    return [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]


@pytest.fixture(scope="session")
def channel_mirror(tmp_path_factory, conda_channel) -> str:
    mirror = tmp_path_factory.mktemp("mirror")
    (mirror / "conda-forge").symlink_to(Path(urlparse(conda_channel).path))
    return mirror.as_uri()


@pytest.fixture
def doc_env(store_root, channel_mirror) -> dict[str, str]:
    environ = dict(os.environ)
    environ["BAYOU_CHANNEL_ALIAS"] = channel_mirror
    environ["PATH"] = os.pathsep.join([str(BIN), environ.get("PATH", "")])
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environ.get("PYTHONPATH")]))
    return environ


def _run(argv: list[str], block: Block, cwd: Path, environ: dict) -> str:
    proc = subprocess.run(argv, cwd=cwd, env=environ, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(
            f"{block.where}: {shlex.join(argv)} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}",
            pytrace=False,
        )
    return proc.stdout


def _sh_line(line: str) -> list[str]:
    argv = shlex.split(line, comments=True)
    if argv and argv[0] in ("bayou", "python", "python3"):
        argv[0] = str(BIN / argv[0]) if argv[0] == "bayou" else sys.executable
    return argv


def run_block(block: Block, cwd: Path, environ: dict) -> None:
    if block.file is not None:
        (cwd / block.file).write_text(block.code)
        return
    if block.lang == "python":
        script = cwd / f"block_{block.line}.py"
        script.write_text(block.code)
        out = _run([sys.executable, script.name], block, cwd, environ)
    elif block.lang in ("sh", "bash", "console"):
        out = ""
        for raw in block.code.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if "&&" in line or "|" in line.split("#")[0]:
                assert line in ci_lines(), f"{block.where}: {line!r} is not what .ci/run runs"
                continue
            out += _run(_sh_line(line), block, cwd, environ)
    elif block.lang == "text":
        for line in block.code.splitlines():
            words = line.split("#")[0].split()
            if words[:1] == ["bayou"]:
                command = [w for w in words[1:3] if re.fullmatch(r"[a-z-]+", w)]
                _run([str(BIN / "bayou"), *command, "--help"], block, cwd, environ)
        return
    else:
        pytest.fail(f"{block.where}: a ```{block.lang} block is neither run nor written")
    for text in block.expect:
        assert text in out, f"{block.where}: expected {text!r} in its output:\n{out}"


def test_documents_have_blocks_and_directives_attach() -> None:
    readme = blocks(REPO / "README.md")
    assert len(readme) >= 5
    assert any(b.file for b in readme) and any(b.expect for b in readme)


@pytest.mark.slow
@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_code_block_runs(document: Path, doc_env, tmp_path) -> None:
    if not shutil.which("bayou", path=str(BIN)):
        pytest.fail(f"the bayou console script is not installed in {BIN}")
    for block in blocks(document):
        run_block(block, tmp_path, doc_env)
