"""The `webhooks` Component: signed POSTs of every outcome event to each Domain's endpoints."""
