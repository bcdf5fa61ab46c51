"""Process runtime: the Component protocol, the supervisor, health and metrics, the
HTTP server, logging, the clock and child processes. It imports no other Kannon package: `db/` and
`bus/` build on it (ADR 0051).

`kannon.runtime.component` stays free of database and NATS imports so that every Component (the
SMTPSender in particular, which must never reach the database layer) can depend on it.
"""
