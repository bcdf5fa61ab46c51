"""Process runtime: the Component protocol, the supervisor, shared resources, health and metrics.

`kannon.runtime.component` stays free of database and NATS imports so that every Component (the
SMTPSender in particular, which must never reach the database layer) can depend on it.
"""
