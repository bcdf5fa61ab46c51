"""The Validator Component: Recipient address validation of Deliveries waiting in the Pool."""
