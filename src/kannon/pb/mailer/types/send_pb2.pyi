from kannon.pb.tracking.types import tracking_pb2 as _tracking_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Sender(_message.Message):
    __slots__ = ("email", "alias")
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    email: str
    alias: str
    def __init__(self, email: _Optional[str] = ..., alias: _Optional[str] = ...) -> None: ...

class Recipient(_message.Message):
    __slots__ = ("email", "fields", "tracking")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    TRACKING_FIELD_NUMBER: _ClassVar[int]
    email: str
    fields: _containers.ScalarMap[str, str]
    tracking: _tracking_pb2.TrackingPolicy
    def __init__(self, email: _Optional[str] = ..., fields: _Optional[_Mapping[str, str]] = ..., tracking: _Optional[_Union[_tracking_pb2.TrackingPolicy, _Mapping]] = ...) -> None: ...

class Headers(_message.Message):
    __slots__ = ("to", "cc")
    TO_FIELD_NUMBER: _ClassVar[int]
    CC_FIELD_NUMBER: _ClassVar[int]
    to: _containers.RepeatedScalarFieldContainer[str]
    cc: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, to: _Optional[_Iterable[str]] = ..., cc: _Optional[_Iterable[str]] = ...) -> None: ...

class OneClickUnsubscribe(_message.Message):
    __slots__ = ("url_template",)
    URL_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    url_template: str
    def __init__(self, url_template: _Optional[str] = ...) -> None: ...
