"""Tests of `kannon.runtime`."""
