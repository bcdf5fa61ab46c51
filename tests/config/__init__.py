"""Tests of `kannon.config`."""
