"""Tests of `kannon.validator`."""
