"""IP pools: named groups of sender nodes, each node with its own source address and HELO name
(ADR 0039). A Domain is assigned a pool, a Batch may name another; its Envelopes reach only that
pool's senders. The name rules live here so that the API, the configuration and the bus agree on
them: a pool name becomes a NATS subject token and part of a durable consumer's name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from kannon.model.errors import InvalidArgument

DEFAULT_POOL = "default"
"""The pool of every Domain that names none, and of every sender node that names none: it keeps
the subject and durable consumer Kannon had before pools existed."""

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def check_pool_name(name: str) -> str:
    """`name` if it is a valid pool name (lower-case letters, digits, `-` and `_`, at most 32,
    starting with a letter or digit); ValueError saying why otherwise."""
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a pool name (1-32 of a-z, 0-9, '-', '_'; starting with a-z or 0-9)"
        )
    return name


def check_known_pool(value: str, known: Sequence[str], field: str = "ip_pool") -> str:
    """`value` as a pool name the configuration knows (`known`, from `Settings.known_pools`);
    InvalidArgument naming `field` otherwise. Case is forgiven."""
    name = value.strip().lower()
    if name not in known:
        raise InvalidArgument(
            f"{field}: unknown IP pool {value!r} (known: {', '.join(known)}; see ip_pools)"
        )
    return name


def resolve_pool(batch_pool: str | None, domain_pool: str | None) -> str:
    """The pool a Batch's Envelopes go to: the Batch's own when it named one, else its Domain's,
    else the default pool."""
    return batch_pool or domain_pool or DEFAULT_POOL
