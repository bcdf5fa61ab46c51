"""The KannonError hierarchy: caller mistakes, translated to gRPC status codes in `api/` only.

Infrastructure failures are not KannonErrors: they propagate and take the process down cleanly.
"""

from __future__ import annotations


class KannonError(Exception):
    """A request the caller can fix; the message names the field and says what is wrong."""


class InvalidArgument(KannonError):
    pass


class NotFound(KannonError):
    pass


class Conflict(KannonError):
    """The thing already exists (gRPC AlreadyExists)."""


class PermissionDenied(KannonError):
    pass


class Unauthenticated(KannonError):
    pass


class Unavailable(Exception):
    """A service outside Kannon that a call needs (DNS resolvers) did not answer: not the
    caller's mistake, and not a fault of ours; the API answers UNAVAILABLE (retry later)."""
