"""The API over HTTP: the Connect protocol and gRPC-Web, JSON and binary, on `api.http_port`.

Served by the `connectrpc` library's ASGI application (on uvicorn, :mod:`kannon.runtime.
http_server`) in front of the very servicer objects the grpcio server uses: every unary method
of every service name the gRPC API registers. Nothing of the service logic is repeated here:

* authentication: the same :class:`kannon.api.auth.CallGate`, run as a leading metadata
  interceptor, i.e. before the request body is read (as EarlyAuth does for gRPC);
* failures: the handlers' own :func:`kannon.api.errors.rpc` wrapper decides the status, which
  :meth:`HttpCallContext.abort` turns into the Connect code of the same name;
* the handlers see a context with the three things they use of a grpc.aio one: the metadata
  (the HTTP headers), the peer (for the Admin API's loopback-only mode) and `abort`.

Request bodies are decoded in the endpoint, not in the codec: a 100,000-Recipient SendHTML in JSON
takes over a second to parse, which would stall the event loop (and, in standalone, every other
Component); bodies over :data:`OFF_LOOP_BYTES` are parsed in a thread. Unknown JSON fields are
refused with the field's name rather than silently dropped. At most `api.max_concurrent_rpcs`
calls are served at once (more get RESOURCE_EXHAUSTED before their body is read), and a body over
`api.max_message_size` is refused, as on the gRPC port. Why a second port: ADR 0030.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from connectrpc.code import Code
from connectrpc.codec import Codec
from connectrpc.errors import ConnectError
from connectrpc.method import IdempotencyLevel, MethodInfo, StreamType
from connectrpc.request import RequestContext
from connectrpc.server import ConnectASGIApplication, Endpoint
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import Message

from kannon.api.auth import CallGate
from kannon.api.errors import failure_status
from kannon.api.metrics import CALLS, HTTP_FAILURES, REQUESTS

OFF_LOOP_BYTES = 256 * 1024

# grpcio's codes to Connect's (same names, but for the spelling of CANCELLED).
_CONNECT_CODES: dict[Any, Code] = {
    grpc.StatusCode.CANCELLED: Code.CANCELED,
    **{
        status: Code[status.name]
        for status in grpc.StatusCode
        if status not in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED)
    },
}


def connect_code(status: Any) -> Code:
    return _CONNECT_CODES.get(status, Code.UNKNOWN)


@dataclass(frozen=True, slots=True)
class RawBody:
    """A request body not yet parsed: the codec only keeps it (see module docstring)."""

    data: bytes
    codec: str


class _DeferredCodec(Codec[Message, Any]):
    """Encodes responses; hands request bodies to the endpoint unparsed."""

    def __init__(self, name: str) -> None:
        self._name = name

    def name(self) -> str:
        return self._name

    def encode(self, message: Message) -> bytes:
        if self._name == "json":
            return str(json_format.MessageToJson(message, indent=None)).encode()
        return bytes(message.SerializeToString())

    def decode(self, data: bytes | bytearray, message_class: type[Any]) -> Any:
        return RawBody(bytes(data), self._name)


def parse_body(body: RawBody, message_class: type[Message]) -> Message:
    """The request message; a malformed body is the caller's mistake (INVALID_ARGUMENT)."""
    try:
        if body.codec == "json":
            message = message_class()
            # An unknown field is refused by name: a misspelt "recipient" must not send nothing.
            json_format.Parse(body.data or b"{}", message, ignore_unknown_fields=False)
            return message
        return message_class.FromString(body.data)
    except (json_format.ParseError, ValueError, UnicodeDecodeError) as exc:
        raise ConnectError(Code.INVALID_ARGUMENT, f"malformed {body.codec} request: {exc}") from exc
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ConnectError(
            Code.INVALID_ARGUMENT, f"malformed {body.codec} request: {type(exc).__name__}: {exc}"
        ) from exc


def grpc_peer(client_address: str | None) -> str:
    """A grpc.aio-style peer string (`ipv4:1.2.3.4:5`, `ipv6:[::1]:5`) for the handlers."""
    if not client_address:
        return ""
    host, _, port = client_address.rpartition(":")
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return ""
    if address.version == 6:
        return f"ipv6:[{address}]:{port}"
    return f"ipv4:{address}:{port}"


class HttpCallContext:
    """What the handlers use of a grpc.aio ServicerContext, over a Connect request."""

    def __init__(self, ctx: RequestContext[Any, Any]) -> None:
        self._ctx = ctx

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return [(key.lower(), value) for key, value in self._ctx.request_headers.allitems()]

    def peer(self) -> str:
        return grpc_peer(self._ctx.client_address)

    async def abort(self, code: Any, details: str) -> NoReturn:
        raise ConnectError(connect_code(code), details)


def protocol_of(ctx: RequestContext[Any, Any]) -> tuple[str, str]:
    """(protocol, codec) of a call, from its content type."""
    content_type = ctx.request_headers.get("content-type", "").lower()
    protocol = "grpc-web" if content_type.startswith("application/grpc-web") else "connect"
    codec = "json" if "json" in content_type else "proto"
    return protocol, codec


class _Gatekeeper:
    """Leading metadata interceptor: the call limit and CallGate, before the body is read."""

    def __init__(self, gate: CallGate, max_concurrent: int) -> None:
        self.gate = gate
        self.max_concurrent = max_concurrent
        self.in_flight = 0

    async def on_start(self, ctx: RequestContext[Any, Any]) -> None:
        protocol, codec = protocol_of(ctx)
        method = ctx.method
        REQUESTS.labels(protocol, codec, method.name).inc()
        if self.in_flight >= self.max_concurrent:
            raise ConnectError(
                Code.RESOURCE_EXHAUSTED,
                f"the API is serving {self.max_concurrent} calls (api.max_concurrent_rpcs); "
                "retry shortly",
            )
        self.in_flight += 1
        try:
            headers = {key.lower(): value for key, value in ctx.request_headers.items()}
            await self.gate.check(method.service_name, headers)
        except Exception as exc:
            self.in_flight -= 1
            code, details = failure_status(exc, f"/{method.service_name}/{method.name}")
            CALLS.labels(method.name, code.name).inc()
            raise ConnectError(connect_code(code), details) from None

    async def on_end(
        self, token: None, ctx: RequestContext[Any, Any], error: Exception | None, /
    ) -> None:
        self.in_flight -= 1
        if error is not None:
            code = error.code.value if isinstance(error, ConnectError) else "unknown"
            HTTP_FAILURES.labels(protocol_of(ctx)[0], code).inc()


Handler = Callable[[Message, Any], Awaitable[Message]]


def _endpoint(handler: Handler, info: MethodInfo[Any, Any], input_class: type[Message]) -> Any:
    async def call(body: RawBody, ctx: RequestContext[Any, Any]) -> Message:
        if len(body.data) > OFF_LOOP_BYTES:
            request = await asyncio.to_thread(parse_body, body, input_class)
        else:
            request = parse_body(body, input_class)
        return await handler(request, HttpCallContext(ctx))

    return Endpoint.unary(info, call)


def endpoints(services: Mapping[str, object]) -> dict[str, Any]:
    """`/<service>/<method>` → endpoint, for every unary method of every named service."""
    pool = descriptor_pool.Default()
    found: dict[str, Any] = {}
    for service_name, servicer in services.items():
        service = pool.FindServiceByName(service_name)
        for method in service.methods:
            if method.client_streaming or method.server_streaming:
                continue  # Connect unary only; Kannon's API has no streaming methods
            input_class = message_factory.GetMessageClass(method.input_type)
            info: MethodInfo[Any, Any] = MethodInfo(
                name=method.name,
                service_name=service_name,
                input=RawBody,
                output=message_factory.GetMessageClass(method.output_type),
                idempotency_level=IdempotencyLevel.UNKNOWN,
                stream_type=StreamType.UNARY,
            )
            handler = getattr(servicer, method.name)
            found[f"/{service_name}/{method.name}"] = _endpoint(handler, info, input_class)
    return found


class ConnectApp(ConnectASGIApplication[Mapping[str, object]]):
    """One ASGI application for every service (connectrpc's generated code makes one per
    service; Kannon's servicers are registered under two names each, so it is built here from
    the descriptors instead)."""

    @property
    def path(self) -> str:
        return "/"


def build_app(
    services: Mapping[str, object], gate: CallGate, *, max_bytes: int, max_concurrent: int
) -> ConnectApp:
    return ConnectApp(
        service=services,
        endpoints=endpoints,
        interceptors=[_Gatekeeper(gate, max_concurrent)],
        read_max_bytes=max_bytes,
        codecs=[_DeferredCodec("proto"), _DeferredCodec("json")],
    )
