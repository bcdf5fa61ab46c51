import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Endpoint(_message.Message):
    __slots__ = ("id", "domain", "url", "event_types", "enabled", "description", "created_at", "updated_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    domain: str
    url: str
    event_types: _containers.RepeatedScalarFieldContainer[str]
    enabled: bool
    description: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., domain: _Optional[str] = ..., url: _Optional[str] = ..., event_types: _Optional[_Iterable[str]] = ..., enabled: _Optional[bool] = ..., description: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateEndpointReq(_message.Message):
    __slots__ = ("domain", "url", "event_types", "description", "disabled")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    domain: str
    url: str
    event_types: _containers.RepeatedScalarFieldContainer[str]
    description: str
    disabled: bool
    def __init__(self, domain: _Optional[str] = ..., url: _Optional[str] = ..., event_types: _Optional[_Iterable[str]] = ..., description: _Optional[str] = ..., disabled: _Optional[bool] = ...) -> None: ...

class CreateEndpointRes(_message.Message):
    __slots__ = ("endpoint", "secret")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    endpoint: Endpoint
    secret: str
    def __init__(self, endpoint: _Optional[_Union[Endpoint, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class ListEndpointsReq(_message.Message):
    __slots__ = ("domain",)
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    domain: str
    def __init__(self, domain: _Optional[str] = ...) -> None: ...

class ListEndpointsRes(_message.Message):
    __slots__ = ("endpoints",)
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    def __init__(self, endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ...) -> None: ...

class UpdateEndpointReq(_message.Message):
    __slots__ = ("domain", "id", "url", "enabled", "description", "set_event_types", "event_types")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SET_EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    domain: str
    id: str
    url: str
    enabled: bool
    description: str
    set_event_types: bool
    event_types: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, domain: _Optional[str] = ..., id: _Optional[str] = ..., url: _Optional[str] = ..., enabled: _Optional[bool] = ..., description: _Optional[str] = ..., set_event_types: _Optional[bool] = ..., event_types: _Optional[_Iterable[str]] = ...) -> None: ...

class EndpointRef(_message.Message):
    __slots__ = ("domain", "id")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    domain: str
    id: str
    def __init__(self, domain: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class RotateSecretRes(_message.Message):
    __slots__ = ("endpoint", "secret")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    endpoint: Endpoint
    secret: str
    def __init__(self, endpoint: _Optional[_Union[Endpoint, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class SendTestEventRes(_message.Message):
    __slots__ = ("webhook_id",)
    WEBHOOK_ID_FIELD_NUMBER: _ClassVar[int]
    webhook_id: str
    def __init__(self, webhook_id: _Optional[str] = ...) -> None: ...

class Attempt(_message.Message):
    __slots__ = ("webhook_id", "event_id", "event_type", "attempted_at", "status_code", "error", "latency_ms", "response", "delivery_status")
    WEBHOOK_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTED_AT_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_STATUS_FIELD_NUMBER: _ClassVar[int]
    webhook_id: str
    event_id: str
    event_type: str
    attempted_at: _timestamp_pb2.Timestamp
    status_code: int
    error: str
    latency_ms: int
    response: str
    delivery_status: str
    def __init__(self, webhook_id: _Optional[str] = ..., event_id: _Optional[str] = ..., event_type: _Optional[str] = ..., attempted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., status_code: _Optional[int] = ..., error: _Optional[str] = ..., latency_ms: _Optional[int] = ..., response: _Optional[str] = ..., delivery_status: _Optional[str] = ...) -> None: ...

class ListAttemptsReq(_message.Message):
    __slots__ = ("domain", "endpoint_id", "skip", "take")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    SKIP_FIELD_NUMBER: _ClassVar[int]
    TAKE_FIELD_NUMBER: _ClassVar[int]
    domain: str
    endpoint_id: str
    skip: int
    take: int
    def __init__(self, domain: _Optional[str] = ..., endpoint_id: _Optional[str] = ..., skip: _Optional[int] = ..., take: _Optional[int] = ...) -> None: ...

class ListAttemptsRes(_message.Message):
    __slots__ = ("attempts", "total")
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    attempts: _containers.RepeatedCompositeFieldContainer[Attempt]
    total: int
    def __init__(self, attempts: _Optional[_Iterable[_Union[Attempt, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...

class ReplayReq(_message.Message):
    __slots__ = ("domain", "endpoint_id", "event_id", "from_date", "to_date")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_DATE_FIELD_NUMBER: _ClassVar[int]
    TO_DATE_FIELD_NUMBER: _ClassVar[int]
    domain: str
    endpoint_id: str
    event_id: str
    from_date: _timestamp_pb2.Timestamp
    to_date: _timestamp_pb2.Timestamp
    def __init__(self, domain: _Optional[str] = ..., endpoint_id: _Optional[str] = ..., event_id: _Optional[str] = ..., from_date: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., to_date: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReplayRes(_message.Message):
    __slots__ = ("scheduled",)
    SCHEDULED_FIELD_NUMBER: _ClassVar[int]
    scheduled: int
    def __init__(self, scheduled: _Optional[int] = ...) -> None: ...
