"""PURE glossary types (Batch, Delivery, Domain, Template, outcomes, retry budget, errors).

No I/O, no clock or randomness reads: callers pass `now` and ids in.
"""
