"""Tests of `kannon.api`."""
