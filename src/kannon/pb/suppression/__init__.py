"""Generated protobuf/gRPC code (scripts/generate_proto.py); do not edit."""
