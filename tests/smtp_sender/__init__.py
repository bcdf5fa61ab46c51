"""Tests of the SMTPSender Component against real NATS, DNS (dnsmasq) and SMTP peers."""
