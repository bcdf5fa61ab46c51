"""Tests of `kannon.tracker`."""
