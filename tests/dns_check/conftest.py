"""The DNS check's tests use the real DNS test server (dnsmasq)."""

from tests.peers.fixtures import dns_server  # noqa: F401  (a fixture, registered by importing it)
