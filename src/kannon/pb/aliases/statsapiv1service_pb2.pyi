from kannon.pb.stats.apiv1 import statsapiv1_pb2 as _statsapiv1_pb2
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor
