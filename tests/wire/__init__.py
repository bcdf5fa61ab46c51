"""Tests of `kannon.wire`."""
