"""Tests of `kannon.bus`."""
