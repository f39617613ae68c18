"""Register the marks joblib's test module uses, so loading it warns about nothing."""


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "thread_unsafe: joblib's mark (not thread-safe test)")
    config.addinivalue_line("markers", "no_cover: joblib's mark (excluded from coverage)")
