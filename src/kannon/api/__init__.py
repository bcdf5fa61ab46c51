"""The `api` Component: the gRPC Mailer, Admin, Stats and HZ services (the only home of grpc).

Caller mistakes arrive here as :mod:`kannon.model.errors` exceptions and leave as gRPC status
codes (:mod:`kannon.api.errors`); everything else stays free of transport concerns.
"""
