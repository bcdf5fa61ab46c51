"""Tests of `kannon.dns_check`."""
