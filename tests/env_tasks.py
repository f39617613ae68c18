"""Task functions for tests/test_executor_in_provisioned_envs.py.

Kept apart from the test module: workers of another Python import functions
by reference, and must not need pytest to do so."""


def six_version():
    import six

    return six.__version__
