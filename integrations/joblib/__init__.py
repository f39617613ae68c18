"""joblib's own backend-parametrized tests, run against the "bayou" backend (see README.md)."""
