"""Exception -> gRPC status translation at the API edge, in one place for every handler.

* A caller's mistake (a ``KannonError``) gets its own status code with the error's message, which
  names the field.
* A database outage (:func:`kannon.db.database.is_outage`: connection refused or lost, pool closed,
  "cannot connect now", too many connections, ...) gets UNAVAILABLE, the code gRPC clients and
  their retry policies treat as "try again later". Nothing was written: intake is one transaction.
  So does a service outside Kannon that did not answer (:class:`kannon.model.errors.Unavailable`,
  e.g. the DNS resolvers of CheckDomain).
* Anything else is a fault of ours: it is logged with a fresh correlation id, and the caller gets
  INTERNAL with the same id and no internals, so an operator can find the log line from a
  client's report.
"""

from __future__ import annotations

import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn, Protocol, TypeVar

import grpc

from kannon.api.metrics import CALL_SECONDS, CALLS
from kannon.db.database import is_outage
from kannon.model.errors import (
    Conflict,
    InvalidArgument,
    KannonError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger("kannon.api")

_CODES: tuple[tuple[type[KannonError], Any], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Conflict, grpc.StatusCode.ALREADY_EXISTS),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
)


class CallContext(Protocol):
    """What a handler uses of its call: grpc.aio's ServicerContext on the gRPC port, and
    :class:`kannon.api.connect.HttpCallContext` over Connect and gRPC-Web."""

    def invocation_metadata(self) -> Sequence[tuple[str, str | bytes]] | None: ...

    def peer(self) -> str: ...

    async def abort(self, code: Any, details: str) -> NoReturn: ...


S = TypeVar("S")
Req = TypeVar("Req")
Res = TypeVar("Res")
# A unary handler `(self, request, context) -> response`, typed with the generated messages.
Handler = Callable[[S, Req, CallContext], Awaitable[Res]]


def status_code(error: KannonError) -> Any:
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INVALID_ARGUMENT


def new_correlation_id() -> str:
    return secrets.token_hex(8)


def failure_status(exc: Exception, method: str) -> tuple[Any, str]:
    """The status code and details a failed call answers with; logs what an operator needs."""
    if isinstance(exc, KannonError):
        log.debug("%s refused: %s", method, exc)
        return status_code(exc), str(exc)
    if isinstance(exc, Unavailable):
        log.warning("%s: %s", method, exc)
        return grpc.StatusCode.UNAVAILABLE, f"{exc}; retry later"
    correlation_id = new_correlation_id()
    if is_outage(exc):
        # Expected during a database restart or failover: one line, no traceback.
        log.warning(
            "%s: database unavailable [correlation id %s]: %s: %s",
            method,
            correlation_id,
            type(exc).__name__,
            exc,
        )
        return grpc.StatusCode.UNAVAILABLE, (
            f"the database is unavailable, nothing was changed; retry later "
            f"(correlation id {correlation_id})"
        )
    log.error("%s failed [correlation id %s]", method, correlation_id, exc_info=exc)
    return grpc.StatusCode.INTERNAL, (
        f"internal server error (correlation id {correlation_id}); the server log has the details"
    )


def rpc(method: Handler[S, Req, Res]) -> Handler[S, Req, Res]:
    """Wrap a unary handler `(self, request, context)` with the error translation."""

    @functools.wraps(method)
    async def handler(self: S, request: Req, context: CallContext) -> Res:
        started = time.perf_counter()
        code_name = "OK"
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            # The handler aborted with its own code; grpc.aio's context remembers it.
            aborted = context.code() if hasattr(context, "code") else None
            code_name = getattr(aborted, "name", "UNKNOWN")
            raise
        except Exception as exc:
            code, details = failure_status(exc, method.__name__)
            code_name = code.name
            await context.abort(code, details)
        finally:
            CALL_SECONDS.labels(method.__name__).observe(time.perf_counter() - started)
            CALLS.labels(method.__name__, code_name).inc()

    return handler
