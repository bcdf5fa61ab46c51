"""The analytics dashboard served by the api Component on api.http_port (ADR 0043)."""
