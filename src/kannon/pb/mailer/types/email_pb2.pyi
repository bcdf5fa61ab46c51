from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class EmailToSend(_message.Message):
    __slots__ = ("email_id", "to", "return_path", "body", "should_retry")
    EMAIL_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    RETURN_PATH_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    SHOULD_RETRY_FIELD_NUMBER: _ClassVar[int]
    email_id: str
    to: str
    return_path: str
    body: bytes
    should_retry: bool
    def __init__(self, email_id: _Optional[str] = ..., to: _Optional[str] = ..., return_path: _Optional[str] = ..., body: _Optional[bytes] = ..., should_retry: _Optional[bool] = ..., **kwargs) -> None: ...
