"""The Stats Component: persists outcome events, keeps hourly aggregates, applies retention."""
