"""Tests of `kannon.smtp_server`."""
