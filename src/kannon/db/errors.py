"""Which database failures mean "PostgreSQL is unreachable right now" rather than "this statement
or this data is wrong": the first are retried (an outage of any length), the second are not.

Used by the consumers' retry policy (ADR 0026) and wherever an outage must be told apart from a
bug or a bad request.
"""

from __future__ import annotations

import asyncpg

_UNAVAILABLE = (
    asyncpg.exceptions.PostgresConnectionError,  # class 08: connection lost, refused, rejected
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutting down, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, disk full
    asyncpg.exceptions.InterfaceError,  # the connection went away under the client
    ConnectionError,
    TimeoutError,
    OSError,  # connect() refused or unreachable
)


def is_database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` means the database cannot be reached now (retry later), not a bad query."""
    return isinstance(exc, _UNAVAILABLE)
