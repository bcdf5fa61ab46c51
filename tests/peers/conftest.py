"""Makes the peers' fixtures available to the peers' own tests."""

from tests.peers.fixtures import (  # noqa: F401  (fixtures, registered by importing them)
    dns_server,
    smtp_sink,
    smtp_sink_factory,
    tls_identity,
)
