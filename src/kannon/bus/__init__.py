"""The message bus: the only package that imports nats.

Owns subject and stream names, idempotent stream set-up, publishing through JetStream with a
PubAck and a `Nats-Msg-Id`, the one pull-consumer loop every Component reuses, and the send-guard
key-value bucket.
"""
