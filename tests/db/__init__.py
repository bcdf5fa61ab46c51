"""Tests of `kannon.db`."""
