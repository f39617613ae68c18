"""The shape of the source that DESIGN.md asks for ("The core, as it should read"):
no module of src/bayou over about 500 lines, and no import cycle among them.

A module that grows past the limit is doing more than one job; a cycle means
two modules each need the other, so neither can be read or changed alone.
Both are checked from the source text (see `tests.support.import_graph`).
"""

from __future__ import annotations

from tests.support import import_graph

MAX_MODULE_LINES = 500


def test_no_module_is_over_500_lines():
    too_long = {
        path.relative_to(import_graph.SRC.parent).as_posix(): lines
        for path in import_graph.modules().values()
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: {too_long}"


def test_no_import_cycle():
    found = import_graph.cycles(import_graph.imports())
    assert not found, "\n".join(import_graph.describe(c) for c in found)
