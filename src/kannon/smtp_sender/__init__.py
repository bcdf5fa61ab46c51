"""The SMTPSender Component: consumes Envelopes from `kannon.sending`, delivers them over SMTP
to the recipient's MX (or a relay) and publishes Delivered / Bounced / Errored outcomes.

The only importer of aiosmtplib. It never touches the database: its whole world is NATS, DNS
and remote SMTP servers (an import-linter contract keeps it that way).
"""
