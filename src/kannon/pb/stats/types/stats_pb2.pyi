import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from kannon.pb.tracking.types import tracking_pb2 as _tracking_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StatsAggregated(_message.Message):
    __slots__ = ("type", "timestamp", "count")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    type: str
    timestamp: _timestamp_pb2.Timestamp
    count: int
    def __init__(self, type: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., count: _Optional[int] = ...) -> None: ...

class Stats(_message.Message):
    __slots__ = ("message_id", "domain", "email", "timestamp", "type", "data", "tracking_mode")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TRACKING_MODE_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    domain: str
    email: str
    timestamp: _timestamp_pb2.Timestamp
    type: str
    data: StatsData
    tracking_mode: _tracking_pb2.TrackingMode
    def __init__(self, message_id: _Optional[str] = ..., domain: _Optional[str] = ..., email: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., type: _Optional[str] = ..., data: _Optional[_Union[StatsData, _Mapping]] = ..., tracking_mode: _Optional[_Union[_tracking_pb2.TrackingMode, str]] = ...) -> None: ...

class StatsDataAccepted(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsDataDelivered(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsDataFailed(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class StatsDataRejected(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class StatsDataBounced(_message.Message):
    __slots__ = ("permanent", "code", "msg", "status", "reason", "hard_bounce", "remote_mta", "from_dsn")
    PERMANENT_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MSG_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HARD_BOUNCE_FIELD_NUMBER: _ClassVar[int]
    REMOTE_MTA_FIELD_NUMBER: _ClassVar[int]
    FROM_DSN_FIELD_NUMBER: _ClassVar[int]
    permanent: bool
    code: int
    msg: str
    status: str
    reason: str
    hard_bounce: bool
    remote_mta: str
    from_dsn: bool
    def __init__(self, permanent: _Optional[bool] = ..., code: _Optional[int] = ..., msg: _Optional[str] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., hard_bounce: _Optional[bool] = ..., remote_mta: _Optional[str] = ..., from_dsn: _Optional[bool] = ...) -> None: ...

class StatsDataError(_message.Message):
    __slots__ = ("code", "msg")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MSG_FIELD_NUMBER: _ClassVar[int]
    code: int
    msg: str
    def __init__(self, code: _Optional[int] = ..., msg: _Optional[str] = ...) -> None: ...

class StatsDataOpened(_message.Message):
    __slots__ = ("user_agent", "ip")
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    user_agent: str
    ip: str
    def __init__(self, user_agent: _Optional[str] = ..., ip: _Optional[str] = ...) -> None: ...

class StatsDataClicked(_message.Message):
    __slots__ = ("user_agent", "ip", "url")
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    user_agent: str
    ip: str
    url: str
    def __init__(self, user_agent: _Optional[str] = ..., ip: _Optional[str] = ..., url: _Optional[str] = ...) -> None: ...

class StatsDataComplained(_message.Message):
    __slots__ = ("feedback_type", "user_agent", "source_ip", "arrival_date")
    FEEDBACK_TYPE_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_IP_FIELD_NUMBER: _ClassVar[int]
    ARRIVAL_DATE_FIELD_NUMBER: _ClassVar[int]
    feedback_type: str
    user_agent: str
    source_ip: str
    arrival_date: str
    def __init__(self, feedback_type: _Optional[str] = ..., user_agent: _Optional[str] = ..., source_ip: _Optional[str] = ..., arrival_date: _Optional[str] = ...) -> None: ...

class StatsDataUnsubscribed(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsData(_message.Message):
    __slots__ = ("accepted", "delivered", "failed", "bounced", "opened", "clicked", "rejected", "error", "complained", "unsubscribed")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    BOUNCED_FIELD_NUMBER: _ClassVar[int]
    OPENED_FIELD_NUMBER: _ClassVar[int]
    CLICKED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    COMPLAINED_FIELD_NUMBER: _ClassVar[int]
    UNSUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    accepted: StatsDataAccepted
    delivered: StatsDataDelivered
    failed: StatsDataFailed
    bounced: StatsDataBounced
    opened: StatsDataOpened
    clicked: StatsDataClicked
    rejected: StatsDataRejected
    error: StatsDataError
    complained: StatsDataComplained
    unsubscribed: StatsDataUnsubscribed
    def __init__(self, accepted: _Optional[_Union[StatsDataAccepted, _Mapping]] = ..., delivered: _Optional[_Union[StatsDataDelivered, _Mapping]] = ..., failed: _Optional[_Union[StatsDataFailed, _Mapping]] = ..., bounced: _Optional[_Union[StatsDataBounced, _Mapping]] = ..., opened: _Optional[_Union[StatsDataOpened, _Mapping]] = ..., clicked: _Optional[_Union[StatsDataClicked, _Mapping]] = ..., rejected: _Optional[_Union[StatsDataRejected, _Mapping]] = ..., error: _Optional[_Union[StatsDataError, _Mapping]] = ..., complained: _Optional[_Union[StatsDataComplained, _Mapping]] = ..., unsubscribed: _Optional[_Union[StatsDataUnsubscribed, _Mapping]] = ...) -> None: ...
