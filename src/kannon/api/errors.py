"""KannonError -> gRPC status translation, and the Internal path for real server faults.

A caller's mistake gets its own status code with the error's message (which names the field).
Anything else is a fault of ours: it is logged with a fresh correlation id, and the caller gets
INTERNAL with the same id and no internals, so an operator can find the log line from a
client's report.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from kannon.model.errors import (
    Conflict,
    InvalidArgument,
    KannonError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)

log = logging.getLogger("kannon.api")

_CODES: tuple[tuple[type[KannonError], Any], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Conflict, grpc.StatusCode.ALREADY_EXISTS),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
)

S = TypeVar("S")
Handler = Callable[[S, Any, Any], Awaitable[Any]]


def status_code(error: KannonError) -> Any:
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INVALID_ARGUMENT


def new_correlation_id() -> str:
    return secrets.token_hex(8)


def rpc(method: Handler[S]) -> Handler[S]:
    """Wrap a unary handler `(self, request, context)` with the error translation."""

    @functools.wraps(method)
    async def handler(self: S, request: Any, context: Any) -> Any:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except KannonError as exc:
            log.debug("%s refused: %s", method.__name__, exc)
            await context.abort(status_code(exc), str(exc))
        except Exception:
            correlation_id = new_correlation_id()
            log.exception("%s failed [correlation id %s]", method.__name__, correlation_id)
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"internal server error (correlation id {correlation_id}); "
                "the server log has the details",
            )

    return handler
