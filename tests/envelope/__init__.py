"""Tests of `kannon.envelope`."""
