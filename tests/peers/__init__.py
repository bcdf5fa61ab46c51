"""Reusable real-server test peers: an SMTP sink with a recipient grammar, a DNS server
(dnsmasq) and throw-away TLS identities. Fixtures for them are in `tests.peers.fixtures`."""
