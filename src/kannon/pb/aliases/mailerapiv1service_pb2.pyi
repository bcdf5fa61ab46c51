from kannon.pb.mailer.apiv1 import mailerapiv1_pb2 as _mailerapiv1_pb2
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor
