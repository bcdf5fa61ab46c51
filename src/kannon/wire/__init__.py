"""Translation between protobuf messages and model types: the only place that knows both."""
