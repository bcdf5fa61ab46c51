"""Tests of `kannon.dashboard`."""
