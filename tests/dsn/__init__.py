"""Tests of `kannon.dsn`."""
