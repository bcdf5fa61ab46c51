from kannon.pb.admin.apiv1 import adminapiv1_pb2 as _adminapiv1_pb2
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor
