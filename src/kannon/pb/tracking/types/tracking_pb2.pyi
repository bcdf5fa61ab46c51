from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrackingMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRACKING_MODE_UNSPECIFIED: _ClassVar[TrackingMode]
    TRACKING_MODE_OFF: _ClassVar[TrackingMode]
    TRACKING_MODE_ANONYMOUS: _ClassVar[TrackingMode]
    TRACKING_MODE_PSEUDONYMOUS: _ClassVar[TrackingMode]
    TRACKING_MODE_IDENTIFIED: _ClassVar[TrackingMode]
    TRACKING_MODE_FULL: _ClassVar[TrackingMode]
TRACKING_MODE_UNSPECIFIED: TrackingMode
TRACKING_MODE_OFF: TrackingMode
TRACKING_MODE_ANONYMOUS: TrackingMode
TRACKING_MODE_PSEUDONYMOUS: TrackingMode
TRACKING_MODE_IDENTIFIED: TrackingMode
TRACKING_MODE_FULL: TrackingMode

class TrackingPolicy(_message.Message):
    __slots__ = ("opens", "links")
    OPENS_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    opens: TrackingMode
    links: TrackingMode
    def __init__(self, opens: _Optional[_Union[TrackingMode, str]] = ..., links: _Optional[_Union[TrackingMode, str]] = ...) -> None: ...
