"""Task functions for the executor tests; importable in any env from this directory."""
