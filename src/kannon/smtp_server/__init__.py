"""The SMTPServer Component: inbound SMTP for delivery reports sent to our bounce addresses.

Owns the SMTP listener (the only package importing aiosmtpd), its limits and timeouts, the rule
that only verified bounce addresses are accepted as recipients (no relay, no backscatter), and
turning a parsed report into Bounced events: which Delivery a failed recipient is, and an event
id that makes a re-sent report count once.
"""
