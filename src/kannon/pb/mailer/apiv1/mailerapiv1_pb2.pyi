import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from kannon.pb.mailer.types import send_pb2 as _send_pb2
from kannon.pb.tracking.types import tracking_pb2 as _tracking_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Attachment(_message.Message):
    __slots__ = ("filename", "content")
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    filename: str
    content: bytes
    def __init__(self, filename: _Optional[str] = ..., content: _Optional[bytes] = ...) -> None: ...

class SendHTMLReq(_message.Message):
    __slots__ = ("sender", "subject", "html", "scheduled_time", "recipients", "attachments", "global_fields", "headers", "tracking", "one_click_unsubscribe", "ip_pool")
    class GlobalFieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    HTML_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_TIME_FIELD_NUMBER: _ClassVar[int]
    RECIPIENTS_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_FIELDS_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    TRACKING_FIELD_NUMBER: _ClassVar[int]
    ONE_CLICK_UNSUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    IP_POOL_FIELD_NUMBER: _ClassVar[int]
    sender: _send_pb2.Sender
    subject: str
    html: str
    scheduled_time: _timestamp_pb2.Timestamp
    recipients: _containers.RepeatedCompositeFieldContainer[_send_pb2.Recipient]
    attachments: _containers.RepeatedCompositeFieldContainer[Attachment]
    global_fields: _containers.ScalarMap[str, str]
    headers: _send_pb2.Headers
    tracking: _tracking_pb2.TrackingPolicy
    one_click_unsubscribe: _send_pb2.OneClickUnsubscribe
    ip_pool: str
    def __init__(self, sender: _Optional[_Union[_send_pb2.Sender, _Mapping]] = ..., subject: _Optional[str] = ..., html: _Optional[str] = ..., scheduled_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recipients: _Optional[_Iterable[_Union[_send_pb2.Recipient, _Mapping]]] = ..., attachments: _Optional[_Iterable[_Union[Attachment, _Mapping]]] = ..., global_fields: _Optional[_Mapping[str, str]] = ..., headers: _Optional[_Union[_send_pb2.Headers, _Mapping]] = ..., tracking: _Optional[_Union[_tracking_pb2.TrackingPolicy, _Mapping]] = ..., one_click_unsubscribe: _Optional[_Union[_send_pb2.OneClickUnsubscribe, _Mapping]] = ..., ip_pool: _Optional[str] = ...) -> None: ...

class SendTemplateReq(_message.Message):
    __slots__ = ("sender", "subject", "template_id", "scheduled_time", "recipients", "attachments", "global_fields", "headers", "tracking", "one_click_unsubscribe", "ip_pool")
    class GlobalFieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_TIME_FIELD_NUMBER: _ClassVar[int]
    RECIPIENTS_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_FIELDS_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    TRACKING_FIELD_NUMBER: _ClassVar[int]
    ONE_CLICK_UNSUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    IP_POOL_FIELD_NUMBER: _ClassVar[int]
    sender: _send_pb2.Sender
    subject: str
    template_id: str
    scheduled_time: _timestamp_pb2.Timestamp
    recipients: _containers.RepeatedCompositeFieldContainer[_send_pb2.Recipient]
    attachments: _containers.RepeatedCompositeFieldContainer[Attachment]
    global_fields: _containers.ScalarMap[str, str]
    headers: _send_pb2.Headers
    tracking: _tracking_pb2.TrackingPolicy
    one_click_unsubscribe: _send_pb2.OneClickUnsubscribe
    ip_pool: str
    def __init__(self, sender: _Optional[_Union[_send_pb2.Sender, _Mapping]] = ..., subject: _Optional[str] = ..., template_id: _Optional[str] = ..., scheduled_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recipients: _Optional[_Iterable[_Union[_send_pb2.Recipient, _Mapping]]] = ..., attachments: _Optional[_Iterable[_Union[Attachment, _Mapping]]] = ..., global_fields: _Optional[_Mapping[str, str]] = ..., headers: _Optional[_Union[_send_pb2.Headers, _Mapping]] = ..., tracking: _Optional[_Union[_tracking_pb2.TrackingPolicy, _Mapping]] = ..., one_click_unsubscribe: _Optional[_Union[_send_pb2.OneClickUnsubscribe, _Mapping]] = ..., ip_pool: _Optional[str] = ...) -> None: ...

class SendRes(_message.Message):
    __slots__ = ("message_id", "template_id", "scheduled_time", "accepted_count", "rejected_count", "rejected_recipients")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_TIME_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    REJECTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    REJECTED_RECIPIENTS_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    template_id: str
    scheduled_time: _timestamp_pb2.Timestamp
    accepted_count: int
    rejected_count: int
    rejected_recipients: _containers.RepeatedCompositeFieldContainer[RejectedRecipient]
    def __init__(self, message_id: _Optional[str] = ..., template_id: _Optional[str] = ..., scheduled_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., accepted_count: _Optional[int] = ..., rejected_count: _Optional[int] = ..., rejected_recipients: _Optional[_Iterable[_Union[RejectedRecipient, _Mapping]]] = ...) -> None: ...

class RejectedRecipient(_message.Message):
    __slots__ = ("email", "reason")
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    email: str
    reason: str
    def __init__(self, email: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
