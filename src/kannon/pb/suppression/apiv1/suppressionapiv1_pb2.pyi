import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Suppression(_message.Message):
    __slots__ = ("domain", "address", "reason", "event", "created_at", "expires_at", "note")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    domain: str
    address: str
    reason: str
    event: SuppressionEvent
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    note: str
    def __init__(self, domain: _Optional[str] = ..., address: _Optional[str] = ..., reason: _Optional[str] = ..., event: _Optional[_Union[SuppressionEvent, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., note: _Optional[str] = ...) -> None: ...

class SuppressionEvent(_message.Message):
    __slots__ = ("type", "time", "status", "reply_code", "diagnostic", "message_id")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REPLY_CODE_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSTIC_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    type: str
    time: _timestamp_pb2.Timestamp
    status: str
    reply_code: int
    diagnostic: str
    message_id: str
    def __init__(self, type: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., status: _Optional[str] = ..., reply_code: _Optional[int] = ..., diagnostic: _Optional[str] = ..., message_id: _Optional[str] = ...) -> None: ...

class ListSuppressionsRequest(_message.Message):
    __slots__ = ("domain", "reason", "address_prefix", "skip", "take")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_PREFIX_FIELD_NUMBER: _ClassVar[int]
    SKIP_FIELD_NUMBER: _ClassVar[int]
    TAKE_FIELD_NUMBER: _ClassVar[int]
    domain: str
    reason: str
    address_prefix: str
    skip: int
    take: int
    def __init__(self, domain: _Optional[str] = ..., reason: _Optional[str] = ..., address_prefix: _Optional[str] = ..., skip: _Optional[int] = ..., take: _Optional[int] = ...) -> None: ...

class ListSuppressionsResponse(_message.Message):
    __slots__ = ("suppressions", "total")
    SUPPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    suppressions: _containers.RepeatedCompositeFieldContainer[Suppression]
    total: int
    def __init__(self, suppressions: _Optional[_Iterable[_Union[Suppression, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...

class GetSuppressionRequest(_message.Message):
    __slots__ = ("domain", "address")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    domain: str
    address: str
    def __init__(self, domain: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class GetSuppressionResponse(_message.Message):
    __slots__ = ("suppression",)
    SUPPRESSION_FIELD_NUMBER: _ClassVar[int]
    suppression: Suppression
    def __init__(self, suppression: _Optional[_Union[Suppression, _Mapping]] = ...) -> None: ...

class AddSuppressionRequest(_message.Message):
    __slots__ = ("domain", "address", "expires_at", "note")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    domain: str
    address: str
    expires_at: _timestamp_pb2.Timestamp
    note: str
    def __init__(self, domain: _Optional[str] = ..., address: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., note: _Optional[str] = ...) -> None: ...

class AddSuppressionResponse(_message.Message):
    __slots__ = ("suppression",)
    SUPPRESSION_FIELD_NUMBER: _ClassVar[int]
    suppression: Suppression
    def __init__(self, suppression: _Optional[_Union[Suppression, _Mapping]] = ...) -> None: ...

class RemoveSuppressionRequest(_message.Message):
    __slots__ = ("domain", "address")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    domain: str
    address: str
    def __init__(self, domain: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class RemoveSuppressionResponse(_message.Message):
    __slots__ = ("suppression",)
    SUPPRESSION_FIELD_NUMBER: _ClassVar[int]
    suppression: Suppression
    def __init__(self, suppression: _Optional[_Union[Suppression, _Mapping]] = ...) -> None: ...

class ImportSuppressionsRequest(_message.Message):
    __slots__ = ("domain", "addresses", "expires_at", "note")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    domain: str
    addresses: _containers.RepeatedScalarFieldContainer[str]
    expires_at: _timestamp_pb2.Timestamp
    note: str
    def __init__(self, domain: _Optional[str] = ..., addresses: _Optional[_Iterable[str]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., note: _Optional[str] = ...) -> None: ...

class ImportSuppressionsResponse(_message.Message):
    __slots__ = ("added", "already_suppressed", "rejected")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_SUPPRESSED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    added: int
    already_suppressed: int
    rejected: _containers.RepeatedCompositeFieldContainer[RejectedAddress]
    def __init__(self, added: _Optional[int] = ..., already_suppressed: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[RejectedAddress, _Mapping]]] = ...) -> None: ...

class RejectedAddress(_message.Message):
    __slots__ = ("address", "reason")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    address: str
    reason: str
    def __init__(self, address: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
