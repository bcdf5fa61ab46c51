"""The Dispatcher Component: turns due Deliveries into signed Envelopes on `kannon.sending`, and
keeps the Pool in step with the outcomes the SMTPSender reports (delete, reschedule, end)."""
