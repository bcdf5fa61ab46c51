"""Kannon test suite (a package so shared helpers import as `tests.peers`, `tests.<x>`)."""
