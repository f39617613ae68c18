"""The harness that re-targets joblib's tests: selection, substitution, and its documentation.

Fast: nothing here starts a worker. The suite itself runs in test_joblib_suite.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from integrations.joblib import suite

MODULE = suite.load_module()
CASES = suite.select_cases(MODULE)


def _param_values(case: suite.Case) -> list[dict]:
    return [dict(zip(case.argnames, p.values, strict=True)) for p in case.params()]


def test_readme_table_is_generated_from_the_rules():
    readme = Path(suite.__file__).with_name("README.md").read_text()
    assert suite.readme_with_table(readme) == readme, (
        "README.md is out of date: run python -m integrations.joblib.suite readme"
    )


def test_the_backend_parametrized_tests_are_selected_and_thread_only_ones_are_not():
    for name in (
        "test_simple_parallel",  # ALL_VALID_BACKENDS: bayou registered before import
        "test_error_capture",  # PROCESS_BACKENDS: "loky" substituted
        "test_parallel_timeout_fail",
        "test_abort_backend",
        "test_nested_loop",
        "test_multiple_generator_call_separated_gc",
    ):
        assert name in CASES
    assert "test_mutate_input_with_threads" not in CASES  # not parametrized over backends
    assert "test_retrieval_context" not in CASES  # a custom thread backend only
    for case in CASES.values():
        for values in _param_values(case):
            backends = [v for k, v in values.items() if k in suite.BACKEND_ARGS]
            assert any(suite._is_bayou(v) for v in backends), (case.name, values)


def test_nested_combinations_put_bayou_in_every_slot_once():
    @pytest.mark.parametrize("parent_backend,child_backend,x", [("loky", "loky", 1)])
    def nested(parent_backend, child_backend, x):
        pass

    case = suite.case_for("nested", nested)
    assert case.combos == [("bayou", "loky", 1), ("loky", "bayou", 1), ("bayou", "bayou", 1)]


def test_backend_instances_are_substituted_by_instances():
    from bayou.joblib import BayouBackend

    case = CASES["test_simple_parallel"]
    backends = [combo[case.argnames.index("backend")] for combo in case.combos]
    assert "bayou" in backends
    assert any(isinstance(b, BayouBackend) for b in backends)


@pytest.mark.parametrize(
    "rule",
    [*suite.SKIPS, *suite.XFAILS, *(rule for rule, _ in suite.OVERRIDES)],
    ids=lambda rule: rule.label(),
)
def test_every_rule_matches_a_case(rule):
    case = CASES.get(rule.test)
    assert case is not None, f"{rule.test} is not a selected test any more"
    assert any(rule.matches(rule.test, values) for values in _param_values(case)), rule.label()


def test_overrides_are_applied_and_patched_tests_exist():
    case = CASES["test_multiple_generator_call_separated_gc"]
    for values in _param_values(case):
        if values["backend"] == "bayou":
            assert values["error"] is False
    for name in suite.PATCHES:
        assert name in CASES
        copy = CASES[name].function()
        assert copy.__globals__ is not MODULE.__dict__
        assert copy.__globals__["check_subprocess_call"] is not MODULE.check_subprocess_call
    plain = CASES["test_simple_parallel"].function()
    assert (
        plain.__globals__ is MODULE.__dict__
        and plain.__code__ is MODULE.test_simple_parallel.__code__
    )
