"""A SendHTML/SendTemplate request kept as its wire bytes, its Recipients read a chunk at a time.

grpcio would decode the whole request before the handler runs: for 100,000 Recipients that is
about 33 MiB of protobuf objects held for the whole call, on top of what the handler builds from
them (ADR 0059). The Mailer's gRPC methods are registered with :func:`read_send_body` instead,
which keeps the bytes (as grpcio does anyway) and nothing else. :meth:`SendBody.index` walks the
top-level fields once: every field but `recipients` is decoded into :attr:`SendBody.head` (a
request message without Recipients), and the Recipients are decoded later, a slice of the bytes
at a time, by :meth:`SendBody.chunks`.

The bytes are only *read* differently: the same request is the same Batch, and the idempotency
fingerprint is the one of the whole decoded message (:meth:`SendBody.deterministic_digest`
streams the same bytes through the hash). A request whose Recipients are not one contiguous run
of fields (legal protobuf, which no serializer writes) is decoded whole, as before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import grpc

from kannon.model.errors import InvalidArgument
from kannon.pb.mailer.apiv1 import mailerapiv1_pb2 as mailer_pb

SendMessage = mailer_pb.SendHTMLReq | mailer_pb.SendTemplateReq

RECIPIENTS_FIELD = 6  # SendHTMLReq.recipients and SendTemplateReq.recipients
CHUNK = 2_000
"""Recipients decoded and checked at a time: their objects are freed before the next chunk."""

_LENGTH_DELIMITED = 2


def _varint(data: bytes, i: int) -> tuple[int, int]:
    """The varint at `i` and the offset after it; ValueError when truncated."""
    result = shift = 0
    while True:
        byte = data[i]  # IndexError past the end: truncated
        i += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _skip(data: bytes, i: int, wire_type: int) -> int:
    """The offset after the value of a field of `wire_type` starting at `i`."""
    if wire_type == 0:
        return _varint(data, i)[1]
    if wire_type == 1:
        return i + 8
    if wire_type == _LENGTH_DELIMITED:
        length, i = _varint(data, i)
        return i + length
    if wire_type == 5:  # fixed32
        return i + 4
    # Groups (3, 4) and unknown wire types: left to the full decoder.
    raise ValueError(f"wire type {wire_type}")


class SendBody:
    """The wire bytes of one send request; call :meth:`index` before reading anything else."""

    def __init__(self, message_type: type[SendMessage], data: bytes) -> None:
        self.message_type = message_type
        self.data = data
        self.count = 0
        """How many Recipients the request lists (blank ones included)."""
        self.head: Any = None
        """The request without its Recipients (or, decoded whole, with them: `whole`)."""
        self.whole = False
        """True when the request had to be decoded whole (its Recipients are in `head`)."""
        self._spans: list[tuple[int, int]] = []

    @classmethod
    def decoded(cls, message: SendMessage) -> SendBody:
        """A request decoded already (the Connect listener decodes its own): read as it is."""
        body = cls(type(message), b"")
        body.head = message
        body.whole = True
        body.count = len(message.recipients)
        return body

    def index(self) -> None:
        """Find the Recipients' fields and decode the rest; InvalidArgument if undecodable."""
        if self.head is not None:
            return
        data = self.data
        others: list[bytes] = []
        spans: list[tuple[int, int]] = []
        count = 0
        first = last = -1
        contiguous = True
        try:
            i, end = 0, len(data)
            while i < end:
                start = i
                tag, i = _varint(data, i)
                if tag >> 3 == RECIPIENTS_FIELD and tag & 7 == _LENGTH_DELIMITED:
                    length, i = _varint(data, i)
                    i += length
                    if last not in (-1, start):
                        contiguous = False
                    if count % CHUNK == 0:
                        spans.append((start, i))
                    else:
                        spans[-1] = (spans[-1][0], i)
                    if first < 0:
                        first = start
                    last = i
                    count += 1
                else:
                    i = _skip(data, i, tag & 7)
                    others.append(data[start:i])
            if i != end:
                raise ValueError("truncated")
        except (IndexError, ValueError):
            contiguous = False  # let the decoder name what is wrong
        if not contiguous:
            self.head = self._decode(data)
            self.count = len(self.head.recipients)
            self.whole = True
            return
        self.head = self._decode(b"".join(others))
        self.count = count
        self._spans = spans

    def _decode(self, data: bytes) -> Any:
        try:
            return self.message_type.FromString(data)
        except Exception as exc:  # the decoder's own error types differ by implementation
            raise InvalidArgument(f"request: not a valid {self.message_type.__name__}") from exc

    def chunks(self) -> Iterator[Sequence[Any]]:
        """The Recipients (protobuf messages), at most :data:`CHUNK` at a time, in order."""
        if self.whole:
            yield from chunks_of(self.head.recipients)
            return
        for start, end in self._spans:
            yield self._decode(self.data[start:end]).recipients

    def deterministic_digest(self, prefix: bytes) -> bytes:
        """sha256(prefix + the request decoded whole and serialized deterministically), without
        decoding it whole: the encoder writes known fields in field-number order, unknown ones
        last, so the Recipients' run sits between the head's fields below and above theirs."""
        digest = hashlib.sha256(prefix)
        head = self.head.SerializeToString(deterministic=True)
        if self.whole:
            digest.update(head)
            return digest.digest()
        known = {f.number for f in self.message_type.DESCRIPTOR.fields}
        split = i = 0
        while i < len(head):
            split = i
            tag, i = _varint(head, i)
            if tag >> 3 > RECIPIENTS_FIELD or tag >> 3 not in known:
                break
            i = _skip(head, i, tag & 7)
            split = i
        digest.update(head[:split])
        for start, end in self._spans:
            digest.update(self._decode(self.data[start:end]).SerializeToString(deterministic=True))
        digest.update(head[split:])
        return digest.digest()


def chunks_of(recipients: Sequence[Any]) -> Iterator[Sequence[Any]]:
    """A decoded request's Recipients, :data:`CHUNK` at a time."""
    for start in range(0, len(recipients), CHUNK):
        yield recipients[start : start + CHUNK]


def read_send_body(message_type: type[SendMessage]) -> Any:
    """A request deserializer that keeps the bytes (see the module docstring)."""

    def read(data: bytes) -> SendBody:
        return SendBody(message_type, data)

    return read


def add_mailer_to_server(servicer: Any, server: Any, service_name: str) -> None:
    """Register the Mailer's two methods under `service_name`, as the generated
    `add_*Servicer_to_server` does, with :func:`read_send_body` as their deserializer."""
    handlers = {
        "SendHTML": grpc.unary_unary_rpc_method_handler(
            servicer.SendHTML,
            request_deserializer=read_send_body(mailer_pb.SendHTMLReq),
            response_serializer=mailer_pb.SendRes.SerializeToString,
        ),
        "SendTemplate": grpc.unary_unary_rpc_method_handler(
            servicer.SendTemplate,
            request_deserializer=read_send_body(mailer_pb.SendTemplateReq),
            response_serializer=mailer_pb.SendRes.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, handlers),))
    server.add_registered_method_handlers(service_name, handlers)
