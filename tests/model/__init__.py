"""Tests of `kannon.model`."""
