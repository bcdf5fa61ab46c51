"""Tests of `kannon.stats`."""
